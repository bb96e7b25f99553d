"""Grammar checkers for the grammaticality metric (paper 4.2.1: "LanguageTool error rate").

Two real backends, chosen by `metrics.grammar.backend`; neither falls back to the other, and the result
records which one ran:
- `languagetool`: LanguageTool through language-tool-python, against a running server
  (`languagetool_url`, e.g. on a cluster) or a local install (`languagetool_path`, a folder holding
  LanguageTool-<version>/, used as LTP_PATH; needs java). Checked before generation starts.
- `harper`: Harper (harper-py, Rust, offline), the default where no LanguageTool exists.
An error counts if it starts at or after `start` (the continuation), so the prompt's own errors and a
continuation that starts mid-sentence are not counted. `ignore_kinds` drops error kinds (Harper lint
kinds such as Spelling, LanguageTool category ids such as TYPOS).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from mspgt.errors import MspgtError, choose

BACKENDS = ("harper", "languagetool")
HARPER_DIALECTS = {
    "en-US": "AMERICAN",
    "en-GB": "BRITISH",
    "en-AU": "AUSTRALIAN",
    "en-CA": "CANADIAN",
    "en-IN": "INDIAN",
}



@contextlib.contextmanager
def scoped_environ(name: str, value: str) -> Iterator[None]:
    """Set the environment variable `name` while the block runs, then restore it (no process-wide change)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class GrammarChecker(Protocol):
    name: str  # the backend that ran, recorded in the results
    detail: str  # version / server / dialect

    def count_errors(self, text: str, start: int = 0) -> int | None: ...  # None: the checker cannot read it

    def close(self) -> None: ...


class HarperChecker:
    """Harper's linter (all default lints; `ignore_kinds` drops lint kinds)."""

    name = "harper"

    def __init__(self, language: str = "en-US", ignore_kinds: list[str] | tuple[str, ...] = ()) -> None:
        try:
            import harper
        except ImportError:
            raise MspgtError(
                "metrics.grammar.backend=harper needs harper-py", "pip install harper-py==0.2.0"
            ) from None
        choose("harper language", language, tuple(HARPER_DIALECTS), "metrics.grammar.language")
        dialect = getattr(harper.Dialect, HARPER_DIALECTS[language])
        self.linter = harper.Linter(dialect=dialect)
        self.ignore = set(ignore_kinds)
        self.unreadable = 0  # texts harper could not lint (its Rust code panicked)
        version = _package_version("harper-py")
        self.detail = f"harper-py {version}, dialect {language}"

    def count_errors(self, text: str, start: int = 0) -> int | None:
        """Errors from `start` on; None where harper cannot lint the text: harper-core 2.13 panics on some
        texts (e.g. any ending in "both 20"), which pyo3 raises as PanicException, a BaseException."""
        try:
            lints = self.linter.lint(text)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as err:
            if type(err).__name__ != "PanicException":
                raise
            self.unreadable += 1
            return None
        return sum(1 for lint in lints if lint.span.start >= start and lint.lint_kind not in self.ignore)

    def close(self) -> None:
        pass


class LanguageToolChecker:
    """LanguageTool via language-tool-python: a remote server (URL) or a local install (LTP_PATH)."""

    name = "languagetool"

    def __init__(
        self,
        language: str = "en-US",
        url: str | None = None,
        path: str | None = None,
        ignore_kinds: list[str] | tuple[str, ...] = (),
        timeout_s: float = 10.0,
    ) -> None:
        try:
            import language_tool_python as ltp
        except ImportError:
            raise MspgtError(
                "metrics.grammar.backend=languagetool needs language-tool-python",
                "pip install language-tool-python, or use metrics.grammar.backend=harper",
            ) from None
        if bool(url) == bool(path):
            raise MspgtError(
                "metrics.grammar.backend=languagetool needs exactly one of languagetool_url and languagetool_path",
                "set metrics.grammar.languagetool_url=http://host:8081 (a running server) or "
                "metrics.grammar.languagetool_path=/folder/with/LanguageTool-x.y (a local install), "
                "or use metrics.grammar.backend=harper",
            )
        self.ignore = set(ignore_kinds)
        if url:
            check_server_answers(url, timeout_s)
            try:
                self.tool = ltp.LanguageTool(language, remote_server=url)
            except Exception as err:
                raise _server_error(url, err) from err
            self.detail = f"server {url}, {language}"
        else:
            version = local_install_version(Path(str(path)))
            try:
                with scoped_environ("LTP_PATH", str(path)):  # the library reads the install folder only from there
                    self.tool = ltp.LanguageTool(language, language_tool_download_version=version)
            except Exception as err:
                raise MspgtError(
                    f"the local LanguageTool {version} in {path} did not start ({str(err).splitlines()[0][:200]})",
                    "check the install (java -jar languagetool-server.jar runs?) or use metrics.grammar.backend=harper",
                ) from err
            self.detail = f"local LanguageTool {version} ({path}), {language}"

    def count_errors(self, text: str, start: int = 0) -> int:
        return sum(1 for m in self.tool.check(text) if m.offset >= start and m.category not in self.ignore)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a remote server needs no closing; a local one is stopped
            self.tool.close()


def check_server_answers(url: str, timeout_s: float = 10.0) -> None:
    """GET <url>/v2/languages; an error naming the fix if the server does not answer with JSON."""
    probe = urllib.parse.urljoin(url.rstrip("/") + "/", "v2/languages")
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as response:
            json.loads(response.read().decode())
    except (OSError, ValueError, urllib.error.URLError) as err:
        raise _server_error(url, err) from err


def _server_error(url: str, err: BaseException) -> MspgtError:
    return MspgtError(
        f"the LanguageTool server at {url} does not answer ({str(err).splitlines()[0][:200] if str(err) else err!r})",
        "start it (java -cp languagetool-server.jar org.languagetool.server.HTTPServer --port 8081), fix "
        "metrics.grammar.languagetool_url, or choose the offline checker: metrics.grammar.backend=harper",
    )


def local_install_version(path: Path) -> str:
    """The version of the LanguageTool-<version>/ folder under `path`; checks java is on PATH."""
    installs = sorted(p for p in path.glob("LanguageTool-*") if p.is_dir()) if path.is_dir() else []
    if not installs:
        raise MspgtError(
            f"metrics.grammar.languagetool_path={path} holds no LanguageTool-<version>/ folder",
            "unzip LanguageTool (https://languagetool.org/download/) there, set languagetool_url to a running "
            "server instead, or use metrics.grammar.backend=harper",
        )
    if shutil.which("java") is None:
        raise MspgtError(
            "a local LanguageTool needs java, which is not on PATH",
            "install a Java runtime (>= 17), or use metrics.grammar.backend=harper",
        )
    return installs[-1].name.removeprefix("LanguageTool-")


def _package_version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


def make_grammar_checker(cfg: DictConfig) -> GrammarChecker:
    """The checker `metrics.grammar` names, ready to use (a LanguageTool server has answered)."""
    choose("grammar backend", cfg.backend, BACKENDS, "metrics.grammar.backend")
    ignore = list(cfg.get("ignore_kinds") or [])
    if cfg.backend == "harper":
        return HarperChecker(cfg.language, ignore)
    return LanguageToolChecker(
        cfg.language,
        url=cfg.get("languagetool_url"),
        path=cfg.get("languagetool_path"),
        ignore_kinds=ignore,
        timeout_s=float(cfg.get("languagetool_timeout_s", 10.0)),
    )
