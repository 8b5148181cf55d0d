# The example MCP server behind the MCP gateway (examples/mcp/server.py),
# on the official Python MCP SDK.
FROM python:3.11-slim
RUN pip install --no-cache-dir mcp==2.3.0 && useradd --system --uid 10001 tools
COPY server.py /srv/server.py
USER tools
CMD ["python", "/srv/server.py"]
