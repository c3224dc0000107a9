#!/usr/bin/env bash
# Install SmartPole under systemd on a Debian pole (or, with "receiver", on a server).
#
#   sudo systemd/install.sh            # the gateway daemon: smartpole-gateway.service
#   sudo systemd/install.sh receiver   # the cloud receiver: smartpole-receiver.service
#
# Creates the system user "smartpole", a virtualenv in /opt/smartpole/venv with this
# checkout installed in it, /etc/smartpole/<pole|receiver>.toml from the example (kept
# if it exists) and an empty /etc/smartpole/secrets.env for SMARTPOLE_* secrets, then
# enables and starts the unit. Run it again to upgrade.
set -euo pipefail

role="${1:-gateway}"
case "$role" in
  gateway) config=pole.toml ;;
  receiver) config=receiver.toml ;;
  *) echo "usage: $0 [gateway|receiver]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
unit="smartpole-$role.service"

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv tesseract-ocr tesseract-ocr-eng >/dev/null

if ! id smartpole >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/smartpole --no-create-home --shell /usr/sbin/nologin smartpole
fi

install -d -m 0755 /opt/smartpole
[ -x /opt/smartpole/venv/bin/python ] || python3 -m venv /opt/smartpole/venv
/opt/smartpole/venv/bin/python -m pip install -q --upgrade pip
/opt/smartpole/venv/bin/python -m pip install -q "$src"

install -d -m 0750 -o root -g smartpole /etc/smartpole
if [ ! -e "/etc/smartpole/$config" ]; then
  install -m 0640 -o root -g smartpole "$src/config/${config%.toml}.example.toml" "/etc/smartpole/$config"
  echo "installed /etc/smartpole/$config from the example: set the pole id and receiver URL in it"
fi
if [ ! -e /etc/smartpole/secrets.env ]; then
  install -m 0640 -o root -g smartpole /dev/null /etc/smartpole/secrets.env
  echo "# SMARTPOLE_UPLINK_TOKEN=...  SMARTPOLE_HTTP_PASSWORD_HASH=...  (see README)" > /etc/smartpole/secrets.env
fi
/opt/smartpole/venv/bin/smartpole check-config "/etc/smartpole/$config"

install -m 0644 "$src/systemd/$unit" "/etc/systemd/system/$unit"
systemctl daemon-reload
systemctl enable "$unit"
systemctl restart "$unit"
systemctl --no-pager status "$unit" || true
