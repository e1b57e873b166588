# One image with the three binaries: todo-server, todo-worker, todo-lb.
# docker-compose.yml picks the command per service.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p todo-server -p todo-worker -p todo-lb \
 && cp target/release/todo-server target/release/todo-worker target/release/todo-lb /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/todo-server /usr/local/bin/todo-worker /usr/local/bin/todo-lb /usr/local/bin/
USER nobody
EXPOSE 8080 8000
CMD ["todo-server"]
