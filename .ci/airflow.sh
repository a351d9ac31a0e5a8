#!/usr/bin/env bash
# Run gigaseg's Airflow 3 integration for real: a separate virtualenv holding
# Airflow 3 + gigaseg, and a throw-away SQLite-backed AIRFLOW_HOME per DAG run
# (no scheduler, no API server, no triggerer: `airflow dags test` runs tasks and
# triggers of deferred tasks in-process).
#
#   bash .ci/airflow.sh setup                         # create/refresh venv (idempotent)
#   bash .ci/airflow.sh run-dag DAGS_FOLDER DAG_ID [dags-test args...]
#   bash .ci/airflow.sh airflow ARGS...               # any airflow CLI call, same env
#   eval "$(bash .ci/airflow.sh env)"                 # print the exports used
#
# run-dag: db migrate -> dags reserialize -> dags list-import-errors (fails on any)
#          -> dags test DAG_ID; its exit code is that of the first failing step
#          (dags test exits 1 when the run fails, 124 on timeout).
#
# Knobs (environment):
#   AIRFLOW_VENV        venv path (default: $REPO/.venv-airflow)
#   AIRFLOW_VERSION     apache-airflow version (default: 3.3.2)
#   AIRFLOW_PYTHON      interpreter for the venv (default: pyenv 3.11.7, else python3)
#   GIGASEG_PIP_SPEC    what to install for gigaseg (default: -e "$REPO[airflow]" when
#                       $REPO/pyproject.toml exists; "none" skips it)
#   AIRFLOW_PIP_ARGS    extra pip args (word-split), e.g. "-c /path/constraints.txt"
#   AIRFLOW_RUN_HOME    AIRFLOW_HOME for run-dag/airflow (default: fresh temp dir,
#                       deleted afterwards unless AIRFLOW_KEEP_HOME=1)
#   AIRFLOW_DAG_TIMEOUT seconds for `dags test` (default 900). Needed because the
#                       inline trigger runner ignores defer(timeout=...): a trigger
#                       that never fires would hang forever.
#   AIRFLOW_EXTRA_PYTHONPATH  prepended to PYTHONPATH (which is otherwise cleared)
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
AIRFLOW_VENV=${AIRFLOW_VENV:-$REPO/.venv-airflow}
case "$AIRFLOW_VENV" in /*) ;; *) AIRFLOW_VENV=$REPO/$AIRFLOW_VENV ;; esac
AIRFLOW_VERSION=${AIRFLOW_VERSION:-3.3.2}
AIRFLOW_DAG_TIMEOUT=${AIRFLOW_DAG_TIMEOUT:-900}

log() { echo "airflow.sh: $*" >&2; }
die() { log "FAILED: $*"; exit "${2:-1}"; }

pick_python() {
    if [ -n "${AIRFLOW_PYTHON:-}" ]; then echo "$AIRFLOW_PYTHON"; return; fi
    for p in /root/.pyenv/versions/3.11.7/bin/python3 python3.11 python3; do
        command -v "$p" >/dev/null 2>&1 && { command -v "$p"; return; }
    done
    die "no python3 found (set AIRFLOW_PYTHON)"
}

# Package spec for gigaseg as an array (empty when not installable yet).
gigaseg_spec() {
    GIGASEG_SPEC=()
    local s=${GIGASEG_PIP_SPEC-}
    if [ "$s" = none ]; then return; fi
    if [ -n "$s" ]; then read -r -a GIGASEG_SPEC <<<"$s"; return; fi
    # The [airflow] extra may not exist yet: pip only warns about that.
    [ -f "$REPO/pyproject.toml" ] && GIGASEG_SPEC=(-e "$REPO[airflow]")
}

stamp_value() {
    local py=$1
    {
        echo "airflow=$AIRFLOW_VERSION python=$("$py" -V 2>&1)"
        echo "spec=${GIGASEG_SPEC[*]-} pipargs=${AIRFLOW_PIP_ARGS:-}"
        # entry points / extras / deps live here: reinstall when it changes
        [ -f "$REPO/pyproject.toml" ] && sha256sum <"$REPO/pyproject.toml"
        [ -f "$REPO/constraints.txt" ] && sha256sum <"$REPO/constraints.txt"
    } | sha256sum | cut -d' ' -f1
}

# Environment for every airflow command. Only AIRFLOW_HOME and the dags folder
# are strictly needed; the rest pins behaviour against stray settings.
airflow_env() {  # $1 = AIRFLOW_HOME, $2 = dags folder (optional)
    unset AIRFLOW_CONFIG PYTHONHOME VIRTUAL_ENV
    export AIRFLOW_HOME=$1
    export AIRFLOW__CORE__DAGS_FOLDER=${2:-$1/dags}
    export AIRFLOW__CORE__LOAD_EXAMPLES=False          # else ~80 example DAGs get parsed
    export AIRFLOW__CORE__EXECUTOR=LocalExecutor        # unused by `dags test` (no --use-executor)
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$1/airflow.db
    export AIRFLOW__CORE__UNIT_TEST_MODE=False
    export PYTHONPATH=${AIRFLOW_EXTRA_PYTHONPATH:-}
    [ -n "$PYTHONPATH" ] || unset PYTHONPATH
    export PATH=$AIRFLOW_VENV/bin:$PATH
}

cmd_setup() {
    local py stamp want lock=$AIRFLOW_VENV.lock
    py=$(pick_python) || exit 1
    gigaseg_spec
    mkdir -p "$(dirname "$AIRFLOW_VENV")"
    # serialize concurrent setups (parallel pytest workers)
    if command -v flock >/dev/null; then exec 9>"$lock"; flock 9; fi
    stamp=$AIRFLOW_VENV/.airflow-sh-stamp
    want=$(stamp_value "$py")
    if [ -x "$AIRFLOW_VENV/bin/airflow" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        log "venv up to date: $AIRFLOW_VENV"; return 0
    fi
    local t0=$SECONDS pl=$AIRFLOW_VENV/pip-install.log
    if [ ! -x "$AIRFLOW_VENV/bin/python" ]; then
        log "creating venv $AIRFLOW_VENV ($("$py" -V 2>&1))"
        "$py" -m venv "$AIRFLOW_VENV" || die "venv creation"
    fi
    rm -f "$stamp"
    local pip=("$AIRFLOW_VENV/bin/python" -m pip)
    local extra=()
    [ -n "${AIRFLOW_PIP_ARGS:-}" ] && read -r -a extra <<<"$AIRFLOW_PIP_ARGS"
    [ -f "$REPO/constraints.txt" ] && extra+=(-c "$REPO/constraints.txt")
    : >"$pl"
    "${pip[@]}" install -q --upgrade pip >>"$pl" 2>&1 || { tail -20 "$pl" >&2; die "pip upgrade"; }
    # No official constraints file (it lives on GitHub, unreachable here); the
    # plain resolver gives a consistent set for 3.3.2 (pip check is clean).
    log "installing apache-airflow==$AIRFLOW_VERSION ${GIGASEG_SPEC[*]-} (log: $pl)"
    "${pip[@]}" install "${extra[@]}" "apache-airflow==$AIRFLOW_VERSION" ${GIGASEG_SPEC[@]+"${GIGASEG_SPEC[@]}"} \
        >>"$pl" 2>&1 || { grep -v "is ignored: it is neither" "$pl" | tail -30 >&2; die "pip install"; }
    "${pip[@]}" check >>"$pl" 2>&1 || { tail -20 "$pl" >&2; die "pip check"; }
    # Smoke test: any airflow command loads every provider entry point, so a bad
    # get_provider_info() (missing package-name, airflow import at module level...)
    # breaks even `airflow version`.
    local h; h=$(mktemp -d)
    ( airflow_env "$h"; airflow version ) >"$h.out" 2>&1 \
        || { tail -30 "$h.out" >&2; rm -rf "$h" "$h.out"; die "airflow version (provider entry point?)"; }
    log "airflow $(tail -1 "$h.out") ready in $((SECONDS - t0))s"
    rm -rf "$h" "$h.out"
    echo "$want" >"$stamp"
}

ensure_setup() {
    if [ "${AIRFLOW_SKIP_SETUP:-0}" = 1 ]; then
        [ -x "$AIRFLOW_VENV/bin/airflow" ] || die "no airflow in $AIRFLOW_VENV"
    else
        ( cmd_setup ) || exit $?
    fi
}

make_home() {
    if [ -n "${AIRFLOW_RUN_HOME:-}" ]; then
        RUN_HOME=$AIRFLOW_RUN_HOME; mkdir -p "$RUN_HOME"
    else
        RUN_HOME=$(mktemp -d "${TMPDIR:-/tmp}/gigaseg-airflow.XXXXXX")
        [ "${AIRFLOW_KEEP_HOME:-0}" = 1 ] || trap 'rm -rf "$RUN_HOME"' EXIT
    fi
}

step() {  # name, command... ; output to a log, shown on failure
    local name=$1 rc; shift
    "$@" >"$RUN_HOME/$name.log" 2>&1; rc=$?
    if [ $rc -ne 0 ]; then
        tail -60 "$RUN_HOME/$name.log" >&2
        log "step '$name' exited $rc (log: $RUN_HOME/$name.log)"
        exit $rc
    fi
}

cmd_run_dag() {
    [ $# -ge 2 ] || die "usage: run-dag DAGS_FOLDER DAG_ID [dags test args...]" 2
    local dags dag_id=$2
    dags=$(cd "$1" 2>/dev/null && pwd) || die "no dags folder: $1" 2
    shift 2
    ensure_setup
    make_home
    airflow_env "$RUN_HOME" "$dags"
    log "AIRFLOW_HOME=$RUN_HOME dags=$dags dag=$dag_id"
    step db-migrate airflow db migrate
    step reserialize airflow dags reserialize
    # reserialize exits 0 even when a DAG file fails to import; this does not.
    # (Only files containing both "airflow" and "dag" are parsed at all.)
    step import-errors airflow dags list-import-errors -o plain
    local rc
    # SIGINT (not TERM) interrupts an inline trigger cleanly, with a traceback.
    timeout -s INT -k 15 "$AIRFLOW_DAG_TIMEOUT" airflow dags test "$dag_id" "$@"; rc=$?
    case $rc in 124|137) log "dags test timed out after ${AIRFLOW_DAG_TIMEOUT}s" ;; esac
    log "dags test $dag_id exited $rc"
    exit $rc
}

cmd_airflow() {
    ensure_setup
    make_home
    airflow_env "$RUN_HOME" "${AIRFLOW__CORE__DAGS_FOLDER:-$RUN_HOME/dags}"
    airflow "$@"
}

cmd_env() {
    local h=${AIRFLOW_RUN_HOME:-/tmp/gigaseg-airflow-home}
    airflow_env "$h" "${AIRFLOW__CORE__DAGS_FOLDER:-$h/dags}"
    local v
    for v in AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER AIRFLOW__CORE__LOAD_EXAMPLES \
             AIRFLOW__CORE__EXECUTOR AIRFLOW__DATABASE__SQL_ALCHEMY_CONN \
             AIRFLOW__CORE__UNIT_TEST_MODE PATH; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    echo "unset AIRFLOW_CONFIG PYTHONHOME VIRTUAL_ENV"
    if [ -n "${PYTHONPATH:-}" ]; then printf 'export PYTHONPATH=%q\n' "$PYTHONPATH"
    else echo "unset PYTHONPATH"; fi
}

case "${1:-}" in
    setup) shift; cmd_setup "$@" ;;
    run-dag) shift; cmd_run_dag "$@" ;;
    airflow) shift; cmd_airflow "$@" ;;
    env) shift; cmd_env "$@" ;;
    *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
