"""An MCP server built with the official Python SDK (`mcp`, its MCPServer),
used as an upstream behind the Warden MCP gateway in the tests.

Every tool call it receives is appended to the log file as one JSON line
({"tool": ..., "arguments": {...}}), so a test can prove what reached it
and what did not.

    python upstream.py --log calls.jsonl --transport http [--token SECRET]
        prints "LISTENING <port>" once it serves on 127.0.0.1:<port>/mcp;
        with --token, a request without "Authorization: Bearer SECRET" gets 401.
    python upstream.py --log calls.jsonl --transport stdio
"""

import argparse
import json
import os
import socket
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

parser = argparse.ArgumentParser()
parser.add_argument("--log", required=True)
parser.add_argument("--transport", choices=["http", "stdio"], default="http")
parser.add_argument("--token", default="")
args = parser.parse_args()

server = MCPServer("warden-test-upstream", log_level="WARNING")


def logged(tool, **arguments):
    with open(args.log, "a", encoding="utf-8") as log:
        log.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")


@server.tool()
def refund(order_id: str, amount: float, note: str = "") -> str:
    """Refunds an amount on an order."""
    logged("refund", order_id=order_id, amount=amount, note=note)
    return f"refunded {amount} on {order_id}"


@server.tool()
def send_email(to: str, subject: str) -> str:
    """Sends an email."""
    logged("send_email", to=to, subject=subject)
    return f"sent {subject!r} to {to}"


@server.tool()
def delete_record(record_id: str) -> str:
    """Deletes a record for good."""
    logged("delete_record", record_id=record_id)
    return f"deleted {record_id}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup(order_id: str) -> str:
    """Looks an order up."""
    logged("lookup", order_id=order_id)
    return f"order {order_id}: shipped"


@server.tool()
def crash() -> str:
    """Ends this server's process at once (tests restart it)."""
    logged("crash")
    os._exit(3)


@server.tool()
def slow(seconds: float) -> str:
    """Answers after a while."""
    logged("slow", seconds=seconds)
    time.sleep(seconds)
    return "late"


if args.transport == "stdio":
    server.run("stdio")
    sys.exit(0)

import uvicorn  # noqa: E402  (an MCP SDK dependency)
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402

app = server.streamable_http_app(
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)


def guarded(inner, token):
    """Requires the upstream's own credential, which only the gateway holds."""

    async def app(scope, receive, send):
        if scope["type"] == "http" and token:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"upstream credential required"})
                return
        await inner(scope, receive, send)

    return app


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(f"LISTENING {sock.getsockname()[1]}", flush=True)
uvicorn.Server(uvicorn.Config(guarded(app, args.token), log_level="warning", lifespan="on")).run(sockets=[sock])
