#!/usr/bin/env bash
# One entry point for everything a user or CI does with this repository.
#
#   ./build.sh demo [--speed 1]     Replays the bundled sample drive through all four components and
#                                   writes out/demo/report.html, a page to open in any browser.
#   ./build.sh replay LOG --dbc DBC [--config FILE] --out DIR [--strict] [--export csv|parquet DIR]
#                                   Replays a recorded CAN log; writes DIR/report.html, summary.json
#                                   and cloud.jsonl. --strict exits with status 3 on any warning.
#   ./build.sh signals --dbc DBC [--log LOG] [--config FILE]
#                                   Lists every signal of the DBC files; with a log, what each did;
#                                   with a configuration, the signals each rule watches.
#   ./build.sh test [PYTEST ARGS]   Runs ruff, mypy and the whole test suite (it installs the Debian
#                                   packages mosquitto, openssl and chromium first if they are missing).
#   ./build.sh run --interface IF --channel CH [--bitrate N] [--config FILE] [--out DIR]
#                                   Runs the four components live on a python-can bus (a USB adapter,
#                                   SocketCAN); Ctrl-C flushes and stops them.
#   ./build.sh decode-cloud cloud.jsonl|DIR [--to csv|jsonl|parquet] [--dbc DBC] [--out FILE]
#                                   Turns aggregates payloads back into rows (the cloud side).
#   ./build.sh simulate [--out LOG] Regenerates the sample drive recording.
#   ./build.sh bench [--repeat N]   Measures the aggregator and detector against per-sample loops.
#   ./build.sh memory               Measures the peak memory of each component (the recipes' limits).
#   ./build.sh package [--arch x86_64|aarch64] [--out build/]   Builds one deployment zip per function.
#   ./build.sh deploy --thing-group NAME|--thing NAME --bucket BUCKET [--config FILE] [--dry-run]
#                                   Deploys to a core device; a change of the configuration alone
#                                   uploads no zip and creates no component version.
#   ./build.sh setup                Only creates or refreshes .venv.
#
# Every command takes --help for its options; demo, replay, signals, package and deploy also take
# --debug to show tracebacks. The first call creates .venv from requirements.txt; later calls reuse
# it and reinstall only when requirements.txt has changed, so every command is safe to repeat.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

die() { echo "build.sh: $*" >&2; exit 2; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

setup() {
    local want have=""
    want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
    [ -f "$STAMP" ] && have="$(cat "$STAMP")"
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        py="$(find_python)" || die "Python 3.11 is required (the Lambda runtime is python3.11); set PYTHON=/path/to/python3.11"
        echo "build.sh: creating .venv with $py" >&2
        "$py" -m venv "$VENV"
        have=""
    fi
    if [ "$want" != "$have" ]; then
        echo "build.sh: installing requirements.txt into .venv" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt" \
            || die "pip install -r requirements.txt failed"
        echo "$want" >"$STAMP"
    fi
    # The project's own package lives in shared/; a .pth file makes it importable from the venv
    # without a build step (rewritten every time, so a moved checkout still works).
    local site
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$ROOT/shared" >"$site/vehicle_telemetry.pth"
    # Compiled once here, as pip compiles an installed package: a process (each CLI command, the
    # replay's forkserver) never compiles it again, even where PYTHONDONTWRITEBYTECODE is set
    # (about 0.35 s a process otherwise). Only changed files are recompiled; the zips skip them.
    "$VENV/bin/python" -m compileall -q "$ROOT/shared/telemetry" >/dev/null || die "compiling shared/telemetry failed"
}

run_py() { "$VENV/bin/python" "$@"; }

# The uploader's tests run a real MQTT broker (mosquitto) with certificates made by openssl; the
# report's tests open report.html in Debian's chromium (driven by Playwright, no browser download).
test_tools() {
    local missing=()
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build.sh: installing ${missing[*]} (Debian packages) for the tests" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "could not install ${missing[*]}: install them (apt-get install ${missing[*]}) and run again"
    else
        die "the tests need ${missing[*]}: install them (sudo apt-get install ${missing[*]}) and run again"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup)
        setup
        ;;
    demo)
        setup
        run_py -m telemetry demo --out "$ROOT/out/demo" "$@"
        ;;
    replay)
        setup
        run_py -m telemetry replay "$@"
        ;;
    signals)
        setup
        run_py -m telemetry signals "$@"
        ;;
    simulate)
        setup
        run_py -m telemetry simulate "$@"
        ;;
    decode-cloud)
        setup
        run_py -m telemetry decode-cloud "$@"
        ;;
    run)
        setup
        exec "$VENV/bin/python" -m telemetry run "$@"  # exec: Ctrl-C reaches Python, which flushes and exits 0
        ;;
    package)
        setup
        cd "$ROOT"
        run_py -m telemetry package "$@"
        ;;
    deploy)
        setup
        cd "$ROOT"
        run_py -m telemetry deploy "$@"
        ;;
    bench)
        setup
        run_py -m telemetry.tools.bench "$@"
        ;;
    memory)
        setup
        run_py -m telemetry.tools.memory "$@"
        ;;
    test)
        setup
        test_tools
        cd "$ROOT"
        # Static checks first: a lint or type error fails the run before the suite starts.
        run_py -m ruff check --quiet shared lambdas tests || die "ruff found problems (see above)"
        run_py -m mypy shared/telemetry || die "mypy found type errors (see above)"
        for handler in lambdas/*/handler.py; do  # each its own top-level module "handler"
            run_py -m mypy "$handler" >/dev/null || { run_py -m mypy "$handler"; die "mypy: $handler"; }
        done
        run_py -m pytest "$@"
        ;;
    ""|-h|--help|help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd' (try ./build.sh help)"
        ;;
esac
