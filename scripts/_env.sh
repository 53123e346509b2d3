# Shared by scripts/*: make .venv exist and hold the project with (at least) the given extras.
# The stamp in .venv records the pyproject.toml hash and every extra installed so far:
# asking for extras already there installs nothing; a new extra installs the union once.
ensure_venv() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv (first run; takes a minute or two)..." >&2
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
  fi
  local hash stamp have want
  hash="$(sha256sum < pyproject.toml | cut -c1-16)"
  stamp="$(cat .venv/.deps-stamp 2>/dev/null || true)"
  have=""
  [ "${stamp%%-*}" = "$hash" ] && have="${stamp#*-}"
  want="$(printf '%s\n' ${have//,/ } ${extras//,/ } | sort -u | paste -sd, -)"
  # dev holds every other extra's packages (pyproject.toml): with it, they are installed.
  case ",$want," in
    *,dev,*) want="$(printf '%s\n' ${want//,/ } | grep -vxE 'examples|mlflow|clearml|dask|plot' \
                     | paste -sd, -)" ;;
  esac
  if [ "$want" != "$have" ]; then
    echo "installing rose[${want}] into .venv..." >&2
    # (warnings off: setuptools warns on every editable install of a package named like its folder)
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[${want}]" >&2
    echo "$hash-$want" > .venv/.deps-stamp
  fi
}
