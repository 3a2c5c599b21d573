#!/usr/bin/env bash
# Installs the Debian packages recwatch uses, only those that are missing: Java 17 and Maven (the Kafka
# broker), kcat and protoc (reading topics from outside Python). Idempotent; needs root or sudo for apt-get.
# Debian's clickhouse-server is installed on demand by `recwatch infra up --clickhouse server`.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install as root: apt-get install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
