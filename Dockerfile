# snslab server image (server + simulated bridge). The display client runs on the rig's display PC instead:
#   pip install "snslab[display]"  and  snslab display --server tcp://SERVER:5555 --fullscreen
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "torch==2.9.1" --index-url https://download.pytorch.org/whl/cpu || pip install --no-cache-dir torch
COPY pyproject.toml README.md alembic.ini ./
COPY server ./server
COPY wire ./wire
COPY recording_bridge ./recording_bridge
COPY stimulus_client ./stimulus_client
COPY migrations ./migrations
# editable: Alembic finds migrations/ next to the server package
RUN pip install --no-cache-dir -e ".[server,bridge]"
EXPOSE 8000 5555
CMD ["snslab", "server", "--host", "0.0.0.0", "--wire", "tcp://*:5555"]
