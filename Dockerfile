# nof1d as a container for a home server.
#
#   docker build -t nof1d .
#   docker run -d --name nof1d -p 127.0.0.1:8080:8080 -v nof1d-data:/data \
#     -e NOF1D_WEB_TOKEN="$(openssl rand -hex 32)" nof1d
#
# Inside the container the dashboard listens on 0.0.0.0:8080 (so a published
# port reaches it), and nof1d refuses a non-loopback address without a
# credential. The image's configuration (/etc/nof1d/nof1d.toml) therefore
# reads the API token (at least 128 bits: 32 hex digits or more) from the
# environment variable NOF1D_WEB_TOKEN; without it the daemon stops at
# start-up with a message naming the variable.
# For a dashboard login, participants and email, mount your own config over
# /etc/nof1d/nof1d.toml (read-only) with at least:
#
#   data_dir = "/data"
#   [web]
#   listen = "0.0.0.0:8080"
#   password_hash = "$argon2id$..."              # echo 'pw' | docker run --rm -i nof1d hash-password
#   token = { env = "NOF1D_WEB_TOKEN" }          # or { file = "/run/secrets/nof1d_web_token" }
#   allowed_hosts = ["nof1d.home.arpa"]          # names (not IPs) you open it by, besides public_url's
#   [email]
#   public_url = "https://nof1d.home.example"    # where the emails' one-click links point
#
# `serve` is also given --data-dir /data and --listen 0.0.0.0:8080, so a
# copied config cannot move the database out of the volume or bind loopback.
# Other commands read the same config (the working directory holds it):
#   docker exec nof1d nof1d trial list
#   docker exec nof1d nof1d backup /data/nof1d-$(date +%F).sqlite
#   docker exec nof1d nof1d trial propose /usr/share/nof1d/protocols/study-timing.toml --participant alice
# A bind-mounted host folder for /data must belong to uid 10001 (nof1d keeps
# it 0700 and its files 0600).
# See bench/compose.yaml for the same with docker compose.

FROM rust:1-slim-bookworm AS build
# SQLCipher's vendored OpenSSL (encryption at rest) builds with perl and make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, on a stub crate, so that a change to src/ rebuilds
# only nof1d itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY protocols ./protocols
COPY examples ./examples
# COPY keeps the files' own times, older than the stub's build: touch them.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/nof1d --version

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 nof1d \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin nof1d \
 && install -d -o 10001 -g 10001 -m 0700 /data \
 && install -d -m 0755 /etc/nof1d \
 && printf '%s\n' \
      '# nof1d in a container: mount your own over this file (see the Dockerfile).' \
      'data_dir = "/data"' \
      '[web]' \
      'listen = "0.0.0.0:8080"' \
      '# Required: anything but loopback needs a credential.' \
      'token = { env = "NOF1D_WEB_TOKEN" }' \
      > /etc/nof1d/nof1d.toml \
 && chmod 0644 /etc/nof1d/nof1d.toml
COPY --from=build /src/target/release/nof1d /usr/local/bin/nof1d
COPY protocols /usr/share/nof1d/protocols
COPY examples/nof1d.toml /usr/share/doc/nof1d/nof1d.toml
COPY README.md /usr/share/doc/nof1d/README.md

USER 10001:10001
# Commands without --config read ./nof1d.toml: this one.
WORKDIR /etc/nof1d
VOLUME /data
EXPOSE 8080
# The runtime image has no curl: bash's /dev/tcp asks /healthz (200 when the
# database answers, 503 when not).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1:8080\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 line <&3 && [[ $line == 'HTTP/1.1 200'* ]]"]
# SIGTERM: no new job starts, running ones finish (up to 30 s); give the
# container at least 45 s to stop (docker stop -t 45, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["nof1d"]
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:8080"]
