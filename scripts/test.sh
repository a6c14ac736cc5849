#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing (Debian/Ubuntu),
# then runs every test. Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)     # redis-cli creates test clusters
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)                     # scripts/cluster.sh --smoke
command -v openssl >/dev/null 2>&1 || missing+=(openssl)               # certificates for the TLS test
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)   # promtool checks /metrics
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)   # validates docker-compose.yml
command -v python3 >/dev/null 2>&1 || missing+=(python3)               # openapi-spec-validator, schemathesis
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The contract tests' Python tools, in a virtualenv rebuilt only when the pins change.
pyenv=target/pyenv
if ! cmp -s tests/contract/requirements.txt "$pyenv/requirements.txt"; then
  echo "creating $pyenv (schemathesis, openapi-spec-validator, openapi-python-client)"
  rm -rf "$pyenv"
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install -q --disable-pip-version-check -r tests/contract/requirements.txt
  cp tests/contract/requirements.txt "$pyenv/requirements.txt"
fi

cargo test --locked

# Smoke run of the benchmark suite's quick mode: checks that every scenario starts what it
# needs, yields a figure and stops what it started; the figures themselves are not judged.
bash bench/run.sh --quick
