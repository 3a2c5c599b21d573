#!/usr/bin/env bash
# Installs the Debian packages recwatch uses, only those that are missing: Java 17 and Maven (the Kafka
# broker), kcat and protoc (reading topics from outside Python), Prometheus Alertmanager (alert delivery; its
# system service is never started). Idempotent; needs root or sudo for apt-get.
# Debian's clickhouse-server is installed on demand by `recwatch infra up --clickhouse server`.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install as root: apt-get install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
# prometheus-alertmanager's postinst would start a system service on 0.0.0.0:9093/9094: while installing, a
# policy-rc.d denies every service start (as infra/clickhouse_server.py does); removed afterwards if ours.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# written by recwatch while installing packages: start no services\nexit 101\n' \
    | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
