"""An agent: the official Python MCP SDK's client over Streamable HTTP,
pointed at the Warden MCP gateway with the agent's Warden credential.

    python agent.py URL TOKEN STEPS

STEPS is JSON: a list of {"list": true} or {"call": NAME, "arguments":
{...}, "progress": true}. Prints one JSON line per step: {"tools": [names]}
or {"is_error": bool, "text": "...", "progress": [messages]}, or
{"error": "..."} when the request itself failed.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url, token, steps):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    async with Client(transport) as client:
        for step in steps:
            try:
                if step.get("list"):
                    listed = await client.list_tools()
                    print(json.dumps({"tools": sorted(t.name for t in listed.tools)}), flush=True)
                    continue
                progress = []

                async def on_progress(value, total, message):
                    progress.append(message)

                result = await client.call_tool(
                    step["call"],
                    step.get("arguments"),
                    progress_callback=on_progress if step.get("progress") else None,
                )
                text = "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")
                print(json.dumps({"is_error": bool(result.is_error), "text": text, "progress": progress}), flush=True)
            except Exception as error:  # the test reads what went wrong
                print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
