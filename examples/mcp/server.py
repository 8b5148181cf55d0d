"""A support desk's tools as an MCP server, built with the official Python
MCP SDK: the upstream behind the MCP gateway in docker-compose.yml. It
checks nothing itself; the gateway in front of it decides.

    python server.py                      # Streamable HTTP on 0.0.0.0:8097/mcp
    python server.py --transport stdio    # for a gateway that spawns it
"""

import argparse

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations

server = MCPServer("support-desk-tools", log_level="WARNING")


@server.tool()
def issue_refund(order_id: str, amount: float) -> str:
    """Refunds an amount on an order."""
    return f"refunded {amount:g} on order {order_id}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup_order(order_id: str) -> str:
    """Looks an order up."""
    return f"order {order_id}: shipped"


@server.tool()
def send_email(to: str, subject: str) -> str:
    """Emails a customer."""
    return f"sent {subject!r} to {to}"


@server.tool()
def delete_customer(customer_id: str) -> str:
    """Deletes a customer for good."""
    return f"deleted customer {customer_id}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["http", "stdio"], default="http")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8097)
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        # Only the gateway reaches it, by its service name.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        server.run("streamable-http", host=args.host, port=args.port, transport_security=security)
