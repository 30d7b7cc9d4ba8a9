"""Config files are input from disk: any bytes give a model or a one-line ConfigError, never a crash."""

from __future__ import annotations

import string
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from securefed.config import StrictModel, load_toml, parse_model
from securefed.errors import ConfigError


class _Params(StrictModel):
    threshold: int = Field(ge=1, le=10_000)
    clip: float = Field(gt=0, allow_inf_nan=False)
    name: str = "cohort"
    peers: list[int] = []


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_keys = st.sampled_from(["threshold", "clip", "name", "peers", "extra", "thresh0ld", "clip.x"])
_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=20),
    st.booleans(),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@_FUZZ
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_give_a_model_or_config_error(tmp_path, raw):
    p = tmp_path / "fuzz.toml"
    p.write_bytes(raw)
    try:
        model = load_toml(_Params, p)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
    else:
        assert model.threshold >= 1 and model.clip > 0


@_FUZZ
@given(doc=st.dictionaries(_keys, _values, max_size=5))
def test_structured_toml_is_validated_not_trusted(tmp_path, doc):
    text = "".join(f'"{k}" = {_toml_value(v)}\n' for k, v in doc.items())
    p = tmp_path / "fuzz.toml"
    p.write_text(text)
    try:
        model = load_toml(_Params, p)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(p)) and "\n" not in message
    else:
        # Only what the schema allows gets through: no NaN/Inf, no unknown keys, ranges enforced.
        assert set(doc) <= {"threshold", "clip", "name", "peers"}
        assert 1 <= model.threshold <= 10_000 and 0 < model.clip < float("inf")


@pytest.mark.parametrize(
    "text, key",
    [
        ("threshold = 3\nclip = nan\n", "clip"),
        ("threshold = 3\nclip = inf\n", "clip"),
        ("threshold = 0\nclip = 1.0\n", "threshold"),
        ("threshold = 3\nclip = 1.0\npeers = [1, \"x\"]\n", "peers"),
        ("threshold = 3\nclip = 1.0\nthresh0ld = 2\n", "thresh0ld"),
    ],
)
def test_nan_inf_out_of_range_and_typos_name_the_key(tmp_path, text, key):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_toml(_Params, p)


def test_parse_model_rejects_non_mapping_documents():
    for bad in ([], "threshold=3", 7, None):
        with pytest.raises(ConfigError):
            parse_model(_Params, bad, "<fuzz>")  # type: ignore[arg-type]


# ---- the real server and client configuration files ---------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
_leaf_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=12),
    st.booleans(),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=4)), max_size=3),
)


def _emit(doc: dict) -> str:
    lines = []
    for table, body in doc.items():
        lines.append(f'["{table}"]')
        for k, v in body.items():
            lines.append(f'"{k}" = {_toml_value(v)}')
    return "\n".join(lines) + "\n"


def _mutate(doc: dict, data) -> dict:
    doc = {t: dict(b) for t, b in doc.items()}
    table = data.draw(st.sampled_from(sorted(doc)))
    kind = data.draw(st.sampled_from(["replace", "delete", "add", "drop-table"]))
    if kind == "drop-table":
        del doc[table]
    elif kind == "add":
        doc[table][data.draw(st.sampled_from(["extra", "threshhold", "mode"]))] = data.draw(_leaf_values)
    elif doc[table]:
        key = data.draw(st.sampled_from(sorted(doc[table])))
        if kind == "delete":
            del doc[table][key]
        else:
            doc[table][key] = data.draw(_leaf_values)
    return doc


@pytest.mark.parametrize("which", ["server", "client"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_config_files_load_or_give_one_config_error(tmp_path, which, data):
    from securefed.client.config import load_client_config
    from securefed.server.config import load_server_config

    example = tomllib.loads((ROOT / "clients" / f"{which}.toml").read_text())
    p = tmp_path / f"{which}.toml"
    p.write_text(_emit(_mutate(example, data)))
    loader = load_server_config if which == "server" else load_client_config
    try:
        cfg = loader(p)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
        return
    assert type(cfg).__name__ == ("ServerConfig" if which == "server" else "ClientConfig")


@pytest.mark.parametrize("which", ["server", "client"])
def test_the_shipped_example_configs_load(tmp_path, which):
    from securefed.client.config import load_client_config
    from securefed.server.config import load_server_config

    p = tmp_path / f"{which}.toml"
    p.write_text(_emit(tomllib.loads((ROOT / "clients" / f"{which}.toml").read_text())))
    (load_server_config if which == "server" else load_client_config)(p)
