"""The offline corpus: English prose collected from this machine, no network (``load_corpus("offline")``).

The docstrings of a fixed list of Python standard-library modules and their public classes and
functions, the language-reference pages that ``help()`` shows (``pydoc_data.topics``), then the long
descriptions (READMEs) in the installed packages' ``*.dist-info/METADATA``. Code, doctests, markup and
tables are dropped (:func:`_clean_prose`); paragraphs of mostly letters are kept. The texts are
collected in a fresh interpreter (:func:`_offline_texts`) and cached per process. See
:mod:`lens_memory.corpus` for the :class:`~lens_memory.corpus.Corpus` they are wrapped in.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
import warnings
from typing import Iterator

log = logging.getLogger("lens_memory.corpus")  # the corpus's logger, as before these helpers had their own module

# Standard-library modules with no side effects on import (no GUI, no easter eggs, no tests,
# nothing deprecated). Fixed and sorted so the offline corpus is deterministic.
_STDLIB_MODULES = sorted("""
abc argparse array ast asyncio atexit base64 bdb binascii bisect builtins bz2 calendar cmath cmd code codecs
codeop collections collections.abc colorsys compileall concurrent.futures configparser contextlib
contextvars copy copyreg cProfile csv ctypes dataclasses datetime dbm decimal difflib dis doctest email
email.charset email.generator email.header email.headerregistry email.message email.parser email.policy
email.utils enum errno faulthandler fcntl filecmp fileinput fnmatch fractions ftplib functools gc getopt
getpass gettext glob graphlib grp gzip hashlib heapq hmac html html.parser http http.client http.cookiejar
http.cookies http.server imaplib importlib importlib.abc importlib.machinery importlib.metadata
importlib.resources importlib.util inspect io ipaddress itertools json keyword linecache locale logging
logging.config logging.handlers lzma mailbox marshal math mimetypes mmap modulefinder multiprocessing
multiprocessing.managers multiprocessing.pool netrc numbers operator optparse os os.path pathlib pdb pickle
pickletools pkgutil platform plistlib poplib posix pprint profile pstats pty pwd py_compile pyclbr pydoc
pyexpat queue quopri random re reprlib resource runpy sched secrets select selectors shelve shlex shutil
signal site smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct subprocess
symtable sys sysconfig tabnanny tarfile tempfile termios textwrap threading time timeit token tokenize
tomllib trace traceback tracemalloc tty types typing unicodedata unittest unittest.mock urllib.error
urllib.parse urllib.request urllib.robotparser uuid venv warnings wave weakref wsgiref.handlers
wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree
xml.sax xml.sax.handler xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split())

_MIN_PARAGRAPH = 40  # characters
_MIN_LETTERS = 0.7  # fraction of letters among a kept paragraph's non-space characters


_FENCE = re.compile(r"^(```|~~~).*?^(```|~~~)[^\n]*$", re.M | re.S)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")  # markdown [text](url) -> text, images -> alt text
_TAG = re.compile(r"<[^>\n]*>")
_BULLET = re.compile(r"([-*+]|\d+[.)])\s+")  # list items start paragraphs
_CODE_START = (">>>", "...", "..", "|", "+-", "$ ", "#", "=", "---", "<", "{", "}", "[", "]", "(", ")", "@")
_CODE_LINE = re.compile(r"[=;{}<>\[\]]|\w\(|\)$|[:,]$")
_MARKUP = re.compile(r"`+|\*\*|:[a-z:]+:(?=`)|https?://\S+")  # ``code``, **bold**, :func:`name`, URLs


def _letters(s: str) -> float:
    chars = [c for c in s if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(len(chars), 1)


def _is_code(line: str) -> bool:
    s = line.strip()
    if s.startswith(_CODE_START) or _letters(s) < 0.5:
        return True
    indent = len(line) - len(line.lstrip())  # 4+ spaces: an indented block, code unless it reads as prose
    return indent >= 4 and (_letters(s) < 0.75 or _CODE_LINE.search(s) is not None)


def _clean_prose(doc: str) -> str:
    """Keep the prose paragraphs of a docstring or README (code, doctests, markup and tables dropped)."""
    doc = _FENCE.sub("\n", inspect.cleandoc(doc).expandtabs(8))
    doc = _TAG.sub(" ", _LINK.sub(r"\1", _LINK.sub(r"\1", doc)))  # links twice: [![alt](img)](url)
    paragraphs, lines = [], []
    for line in doc.splitlines() + [""]:
        s = line.strip()
        bullet = _BULLET.match(s)
        if s and not _is_code(line) and not (bullet and lines):
            lines.append(s[bullet.end():] if bullet else s)
            continue
        if lines:
            p = " ".join(_MARKUP.sub("", " ".join(lines)).split())
            if len(p) >= _MIN_PARAGRAPH and _letters(p) >= _MIN_LETTERS:
                paragraphs.append(p)
        lines = [s[bullet.end():]] if s and bullet and not _is_code(line) else []
    return "\n\n".join(paragraphs)


def _stdlib_docs() -> Iterator[str]:
    for modname in _STDLIB_MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 -- a module missing from this build
            continue
        yield mod.__doc__ or ""
        for name, obj in sorted(vars(mod).items()):
            owner = getattr(obj, "__module__", None) or ""
            if name.startswith("_") or not (owner == modname or owner.startswith(modname + ".")):
                continue  # defined elsewhere (or private)
            if inspect.isclass(obj):
                yield obj.__doc__ or ""
                for mname, m in sorted(vars(obj).items()):
                    if not mname.startswith("_") and (inspect.isroutine(m) or inspect.isdatadescriptor(m)
                                                      or isinstance(m, (classmethod, staticmethod))):
                        yield getattr(m, "__doc__", None) or ""
            elif inspect.isroutine(obj):
                yield obj.__doc__ or ""


def _pydoc_topics() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics  # the language reference pages that help() shows
    except ImportError:
        return
    for key in sorted(topics):
        yield topics[key]


def _metadata_docs() -> Iterator[str]:
    from importlib.metadata import distributions

    dists = {}
    for d in distributions():  # one per name (the first on sys.path wins, as for imports)
        md = d.metadata
        name = re.sub(r"[-_.]+", "-", ((md["Name"] if md is not None else None) or "").lower())
        if name and name != "lens-memory" and name not in dists:  # not our own README: it changes often
            dists[name] = d
    for name in sorted(dists):
        yield dists[name].metadata["Description"] or ""


@functools.lru_cache(maxsize=1)
def _offline_texts_cached() -> tuple[str, ...]:
    return tuple(_offline_texts())


def _offline_texts() -> list[str]:
    """The offline corpus, collected in a fresh interpreter.

    Which attributes a module has depends on what the process imported before (lazy attributes,
    submodules), so collecting in the calling process would make the corpus -- and every cache
    keyed on its hash -- depend on import order. A child interpreter sees the same state every time.
    """
    import json
    import subprocess
    import sys

    # the child imports lens_memory.corpus first, so it has the same modules loaded as when the collection
    # lived there: the corpus (and its hash) must not change with the module layout
    code = ("import json, sys, lens_memory.corpus; from lens_memory.corpus_offline import _collect_offline_texts; "
            "json.dump(_collect_offline_texts(), sys.stdout)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
        return json.loads(out.stdout)
    except (subprocess.SubprocessError, OSError, ValueError) as exc:  # pragma: no cover - fall back in-process
        log.warning("collecting the offline corpus in a child interpreter failed (%s); collecting in-process", exc)
        return _collect_offline_texts()


def _collect_offline_texts() -> list[str]:
    texts, seen = [], set()
    for doc in (*_stdlib_docs(), *_pydoc_topics(), *_metadata_docs()):
        text = _clean_prose(doc) if isinstance(doc, str) else ""
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts

