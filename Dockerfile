# snslab server image (server + simulated bridge). The display client runs on the rig's display PC instead:
#   pip install "snslab[display]"  and  snslab-display --server tcp://SERVER:5555 --fullscreen
FROM python:3.11-slim
WORKDIR /src
# the CPU build of the torch that pyproject.toml's server extra pins (torch>=2.14.1,<2.15)
RUN pip install --no-cache-dir "torch==2.14.1" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY server ./server
COPY wire ./wire
COPY snslab_common ./snslab_common
COPY recording_bridge ./recording_bridge
COPY stimulus_client ./stimulus_client
COPY migrations ./migrations
# a normal (non-editable) install: the migrations ship inside the package as server/migrations
RUN pip install --no-cache-dir ".[server,bridge]" && rm -rf /src
WORKDIR /app
EXPOSE 8000 5555
# without keys the wire is open to anyone who can reach :5555 (warned at start); mount a key folder and use --keys
CMD ["snslab", "server", "--host", "0.0.0.0", "--wire", "tcp://*:5555", "--insecure"]
