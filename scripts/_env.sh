# Shared by scripts/*: make .venv exist and hold the project with the given extras.
# Re-installs only when pyproject.toml or the extras change (stamp file in .venv).
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run; takes a minute or two)..." >&2
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
  fi
  local stamp
  stamp="$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras}"
  if [ "$(cat .venv/.deps-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "installing rose[${extras}] into .venv..." >&2
    .venv/bin/python -m pip install -q -e ".[${extras}]" >&2
    echo "$stamp" > .venv/.deps-stamp
  fi
}
