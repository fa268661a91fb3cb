"""The command line of every dermjax command that takes --config (main, cv, evaluate).

`parse_flags` is their absl flags parser (app.run's flags_parser): a bad table argument
(an unknown row: the table's rows and the nearest one), a missing config file, an unknown
field (the nearest names), a value of the wrong type or any other bad flag ends in one
`dermjax: error:` line with exit status 2 instead of absl's or ml_collections' traceback.
"""

import difflib

import ml_collections
from absl import flags

from dermjax import config_lib
from dermjax import faults


def _config_arg(argv):
  """(config file path, table argument or None) of --config=PATH[:ARG] in argv, or None."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path, _, table_arg = value.partition(":")
      return path, table_arg or None
  return None


def _field(config, path):
  """(parent ConfigDict, name) of dotted `path` in `config`; None if it names no field."""
  *parents, name = path.split(".")
  node = config
  try:
    for part in parents:
      node = node[part]
    node[name]  # pylint: disable=pointless-statement
  except (KeyError, AttributeError, TypeError, IndexError):
    return None
  return node, name


def unknown_fields(config, argv) -> list:
  """"unknown config field a.b (nearest: a.c, ...)" for each --config.a.b=... override
  that names no field of `config`."""
  names = sorted(config_lib.flatten(config_lib.config_dict(config)))
  problems = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    if _field(config, path) is None:
      nearest = difflib.get_close_matches(path, names, n=3, cutoff=0.5) or [
          n for n in names if n.startswith(path.rsplit(".", 1)[0] + ".")][:5]
      problems.append(f"unknown config field {path}" +
                      (f" (nearest: {', '.join(nearest)})" if nearest else ""))
  return problems


def _one_line(text) -> str:
  return " ".join(str(text).split())


def flag_error(error, argv, config=None) -> str:
  """The one-line message for an exception raised while absl parsed `argv`. `config`: the
  command's config when it is not loaded from --config=PATH (dermjax.evaluate)."""
  where = _config_arg(argv)
  if where is not None:
    try:
      config = config_lib.load_config(*where)
    except Exception as e:  # pylint: disable=broad-except  (any error of the config file)
      known = isinstance(e, (ValueError, KeyError, OSError))
      text = str(e) if known else f"{type(e).__name__}: {e}"
      prefix = "" if text.startswith(where[0]) else f"--config={':'.join(w for w in where if w)}: "
      return _one_line(prefix + text)
  if isinstance(error, (AttributeError, KeyError)) and config is not None:
    problems = unknown_fields(config, argv)
    if problems:
      return "; ".join(problems)
  text = str(error)
  if isinstance(error, flags.IllegalFlagValueError) and text.startswith("flag --config."):
    setting, _, reason = text[len("flag --config."):].partition(": ")
    path, _, value = setting.partition("=")
    found = _field(config, path) if config is not None else None
    if found is not None:
      kind = found[0].get_type(found[1])
      return _one_line(f"config field {path} takes {'an' if kind.__name__[0] in 'aeiou' else 'a'} "
                       f"{kind.__name__}, not {value!r} ({reason})")
  if "not supported for overriding" in text:
    text = text.split(". Currently supported")[0] + " (set it in the config file)"
  return _one_line(text.splitlines()[0] if text else type(error).__name__)


def parse_flags(argv, flag_values=flags.FLAGS):
  """The absl flags parser (app.run's flags_parser) of every command taking --config: any
  error in the flags, the config file or its argument, or an override ends in one
  `dermjax: error:` line with exit status 2."""
  try:
    rest = flag_values(argv)
    loaded = flag_values["config"].value if "config" in flag_values else None
    if loaded is not None and not isinstance(loaded, ml_collections.ConfigDict):
      raise ValueError("the config file did not load")  # ml_collections defers the error.
    return rest
  except Exception as e:  # pylint: disable=broad-except  (flags, config file, overrides)
    config = flag_values["config"].value if "config" in flag_values else None
    faults.fail(flag_error(e, argv, config if isinstance(config, ml_collections.ConfigDict)
                           else None), exit_code=2)
