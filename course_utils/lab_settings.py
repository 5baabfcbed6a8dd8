"""JupyterLab defaults for the course's environment, written to ``<prefix>/share/jupyter/lab/settings/overrides.json``.

One setting, and why: JupyterLab 4.6 sends widget messages (tqdm's progress bars are widgets) over kernel subshells
by default. Opening a subshell is a request on the kernel's control channel, and the kernel answers it with a
"busy", then an "idle" status; JupyterLab takes that "idle" as the state of the whole kernel. So as soon as a
training cell draws its progress bar, the status bar says *Idle* for as long as the cell runs (the control
channel's status messages: jupyter/jupyter_client#838). The course's widgets only display progress, which needs no
subshell, so the course turns comms over subshells off and the indicator tells the truth.

``make install`` and Binder's ``postBuild`` run ``python -m course_utils.lab_settings``; conda users run it once
after creating the environment. It merges into an existing ``overrides.json`` rather than replacing it.
"""

import json
import sys
from pathlib import Path

OVERRIDES: dict[str, dict[str, object]] = {
    "@jupyterlab/apputils-extension:kernels-settings": {"commsOverSubshells": "disabled"},
}


def overrides_path(prefix: str | Path = sys.prefix) -> Path:
    """Where JupyterLab installed under ``prefix`` reads its default overrides."""
    return Path(prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def install(prefix: str | Path = sys.prefix) -> Path:
    """Write :data:`OVERRIDES` into the environment at ``prefix``, keeping any other overrides already there.

    Returns:
        The path of the ``overrides.json`` written.

    Raises:
        ValueError: if an existing ``overrides.json`` is not a JSON object (it is left as it was).
    """
    path = overrides_path(prefix)
    current: dict = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it, then run this again") from None
        if not isinstance(current, dict):
            raise ValueError(f"{path} does not hold a JSON object; fix or remove it, then run this again")
    for plugin, settings in OVERRIDES.items():
        existing = current.get(plugin)
        current[plugin] = {**(existing if isinstance(existing, dict) else {}), **settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    return path


def is_installed(prefix: str | Path = sys.prefix) -> bool:
    """Whether every course setting is in effect in the environment at ``prefix``."""
    try:
        current = json.loads(overrides_path(prefix).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(current, dict) and all(
        isinstance(current.get(plugin), dict) and all(current[plugin].get(k) == v for k, v in settings.items())
        for plugin, settings in OVERRIDES.items()
    )


def main(prefix: str | Path = sys.prefix) -> int:
    """Install the settings and say where; a clear message and exit status 1 when that is impossible."""
    try:
        print(f"JupyterLab settings for the course written to {install(prefix)}")
    except (OSError, ValueError) as error:
        print(f"could not write the JupyterLab settings: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
