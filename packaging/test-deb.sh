#!/usr/bin/env bash
# Installs a built stretcher .deb, checks what it installed, deploys the bundled
# example with /usr/bin/stretcher, then purges it and checks that nothing is left.
# Run as root on a machine where the package may be installed and removed:
#   bash packaging/test-deb.sh target/debian/stretcher_VERSION_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:?usage: test-deb.sh PACKAGE.deb}
[ "$(id -u)" = 0 ] || { echo "test-deb: needs root (dpkg -i)" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
units=/usr/lib/systemd/system
unit=$units/stretcher-watch.service
catch_up_units="$units/stretcher-catch-up.service $units/stretcher-catch-up.timer"
fail() { echo "test-deb: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What the package ships, as absolute paths (directories end in /).
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -e 's|^\./|/|' -e '/^\/$/d' >"$work/files"

# A state directory made before the package (stretcher run by hand as root, the
# tests) has the umask's mode: the package must still leave it 0700.
[ -e /var/lib/stretcher ] || install -d -m 0755 /var/lib/stretcher
dpkg -i "$deb" >/dev/null
dpkg-query -W -f='${Status}\n' stretcher | grep -qx 'install ok installed' || fail "not installed"

# The binary, the state directory, the unit (not enabled), the docs.
[ "$(/usr/bin/stretcher --version)" = "stretcher $version" ] || fail "/usr/bin/stretcher --version"
[ "$(stat -c '%a %U:%G' /var/lib/stretcher)" = "700 root:root" ] || fail "/var/lib/stretcher is not 0700 root:root"
for u in $unit $catch_up_units; do
  [ -f "$u" ] || fail "$u missing"
  if compgen -G "/etc/systemd/system/*.wants/$(basename "$u")" >/dev/null; then
    fail "$(basename "$u") is enabled"
  fi
done
for f in copyright changelog.gz README.Debian examples/consul-watches.json examples/serf-event-handler.txt; do
  [ -f "/usr/share/doc/stretcher/$f" ] || fail "/usr/share/doc/stretcher/$f missing"
done
python3 -m json.tool /usr/share/doc/stretcher/examples/consul-watches.json >/dev/null ||
  fail "consul-watches.json is not JSON"

# The man page renders cleanly and names every flag --help names.
man_text=$(MANWIDTH=80 man --warnings -l /usr/share/man/man1/stretcher.1.gz 2>"$work/man.err")
[ ! -s "$work/man.err" ] || fail "man warnings: $(cat "$work/man.err")"
for flag in $(/usr/bin/stretcher --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
  grep -q -- "$flag" <<<"$man_text" || fail "the man page lacks $flag"
done

# systemd's own check of the unit, where systemd's tools are. consul is not a Debian
# package, so its absence (no consul.service, no /usr/bin/consul) is the only message
# allowed here.
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" >"$work/verify" 2>&1 || true
  if grep -v -e 'consul\.service' -e '/usr/bin/consul' "$work/verify" | grep -q .; then
    fail "systemd-analyze verify $unit: $(cat "$work/verify")"
  fi
  echo "test-deb: systemd-analyze verify $unit: $(tr '\n' ' ' <"$work/verify")" >&2
  # The catch-up service and its timer: nothing may be said of them, but that serf's
  # own unit is missing where the serf package is not installed.
  # shellcheck disable=SC2086 # two paths
  systemd-analyze verify $catch_up_units >"$work/verify" 2>&1 || true
  if grep -v -e "serf\.service" "$work/verify" | grep -q .; then
    fail "systemd-analyze verify $catch_up_units: $(cat "$work/verify")"
  fi
  if [ -f /usr/lib/systemd/system/serf.service ] || [ -f /lib/systemd/system/serf.service ]; then
    [ ! -s "$work/verify" ] || fail "systemd-analyze verify $catch_up_units: $(cat "$work/verify")"
  fi
  echo "test-deb: systemd-analyze verify $catch_up_units: $(tr '\n' ' ' <"$work/verify")" >&2
else
  echo "test-deb: no systemd-analyze here; unit not verified" >&2
fi

# The bundled example, with the installed binary, as a serf event (so the default
# state directory /var/lib/stretcher gets its state file), then its replay.
manifest="file://$PWD/fixtures/demo/manifest.yml"
serf_run() {
  printf '%s' "$manifest" | env -u CONSUL_INDEX SERF_EVENT=user SERF_USER_EVENT=deploy \
    SERF_USER_LTIME="$1" STRETCHER_DEMO_DEST="$work/app" /usr/bin/stretcher 2>"$work/log"
}
serf_run 1 || fail "deploy with /usr/bin/stretcher: $(cat "$work/log")"
grep -q 'deploy succeeded' "$work/log" || fail "no success hook: $(cat "$work/log")"
[ -x "$work/app/bin/hello" ] || fail "the example did not deploy"
[ -f /var/lib/stretcher/event-deploy.json ] || fail "no state file in /var/lib/stretcher"
serf_run 1 || fail "replay: $(cat "$work/log")"
grep -q 'Skipping serf user event "deploy" (LTime 1)' "$work/log" || fail "the replay was not skipped: $(cat "$work/log")"
serf_run 2 || fail "second deploy: $(cat "$work/log")"

# Purge: nothing of the package is left, state included (no conffiles to keep).
dpkg --purge stretcher >/dev/null
if dpkg-query -W -f='${Status}\n' stretcher 2>/dev/null | grep -q 'installed\|config-files'; then
  fail "dpkg still knows stretcher after purge"
fi
while read -r path; do
  case "$path" in
    */)
      # A directory may stay only when another package owns it (/usr/bin, ...).
      if [ -d "$path" ] && ! dpkg -S "${path%/}" >/dev/null 2>&1; then
        fail "directory $path left after purge"
      fi
      ;;
    *)
      if [ -e "$path" ] || [ -L "$path" ]; then
        fail "$path left after purge"
      fi
      ;;
  esac
done <"$work/files"
left=$(find /etc /var/lib /usr/share/doc /usr/share/man /usr/lib/systemd -name '*stretcher*' 2>/dev/null | grep -v "^$work" || true)
[ -z "$left" ] || fail "left after purge: $left"
if compgen -G "/var/lib/dpkg/info/stretcher.*" >/dev/null; then
  fail "dpkg info files left: $(echo /var/lib/dpkg/info/stretcher.*)"
fi
echo "test-deb: $deb installed, ran, deployed the example and purged cleanly"
