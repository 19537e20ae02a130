# Runs before the schema check (common.smk): a schema error prints the section's values, and a
# judge section may hold an API key pasted by mistake. Stop first, naming only the key.
import re

_judge_schema = tree_module("configschema").schema(str(Path(REPO) / "workflow" / "schemas" / "config.schema.yaml"))
_judge_keys = _judge_schema["properties"]["judge"]["properties"]
for _key in config.get("judge") or {}:
    if _key not in _judge_keys:
        raise ValueError(tree_module("configschema").unknown_key(f"judge.{_key}", _judge_keys) + " (an API key "
                         "belongs in the environment variable named by judge.api_key_env)")
_key_env = (config.get("judge") or {}).get("api_key_env")
if _key_env is not None and not (isinstance(_key_env, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", _key_env)):
    raise ValueError("config key judge.api_key_env must be the NAME of an environment variable "
                     "(letters, digits, _), not the key itself")
