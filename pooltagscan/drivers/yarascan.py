"""YARA rules: the prefilter ("does this file import a pool API?") and the fallback
that finds tag-like immediates near an allocation when data flow cannot.

A rule's YARA tag says what it is for:

- `pool_import`: file-level rules. A file that matches none of them is not
  disassembled at all (YARA's `pe` module reads the import table in C, much faster
  than parsing it in Python, so folders full of unrelated drivers go by quickly).
- `tag_immediate`: instruction patterns that carry a 4-byte immediate (`mov r32, imm`,
  `mov dword [rsp+N], imm`, `push imm`...). They are run only over the few bytes before
  a pool API call whose tag the data flow could not recover; every match that decodes
  to an instruction with a printable 4-byte immediate becomes a low-confidence tag.

Our own rules live in the repository's top-level `rules/drivers/` folder, the one place
they are kept; the build (setup.py) copies them into the package as
`pooltagscan/_rules/drivers/`, so an installed wheel has them too. `pool_imports.yar`
is generated from the API table (`pool_import_rule_source()`, a test keeps the two
identical). Should neither folder be there, the prefilter falls back to the same rule
text built in memory, and the YARA fallback is off unless the user names rule files
with `--rules` (or points `POOLTAGSCAN_RULES` at a folder of them). Users' rule files
follow the same tag convention; a rule with neither tag is an error, because it would
silently do nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yara

from pooltagscan.drivers.apis import POOL_APIS, RESOLVER_APIS, WDF_BIND
from pooltagscan.errors import InputError
from pooltagscan.rulefiles import check_rule_file

__all__ = [
    "IMMEDIATE_TAG",
    "PREFILTER_TAG",
    "RULES_ENV",
    "RuleSet",
    "builtin_rules_dir",
    "is_tag_like",
    "pool_import_rule_source",
]

PREFILTER_TAG = "pool_import"
IMMEDIATE_TAG = "tag_immediate"
#: Environment variable naming a folder of built-in rule files (overrides `rules/drivers/`).
RULES_ENV = "POOLTAGSCAN_RULES"
_PREFILTER_FILE = "pool_imports.yar"


def builtin_rules_dir() -> Path | None:
    """The folder of our own rule files: `$POOLTAGSCAN_RULES`, else the checkout's
    `rules/drivers/` beside the package (running from the source tree or an editable
    install: the checkout is the truth, never a stale copy), else the copy installed
    with the package (`pooltagscan/_rules/drivers/`, a wheel install), else None."""
    configured = os.environ.get(RULES_ENV)
    if configured:
        return Path(configured)
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "rules" / "drivers", package / "_rules" / "drivers"):
        if candidate.is_dir():
            return candidate
    return None


def pool_import_rule_source() -> str:
    """The text of `rules/drivers/pool_imports.yar`, derived from the API table."""
    modules = sorted({module for api in POOL_APIS.values() for module in api.modules})
    names = sorted(POOL_APIS)
    module_pattern = "|".join(re.escape(m).replace("\\.", r"\.") for m in modules)
    name_pattern = "|".join(names)
    resolver_modules = "|".join(
        re.escape(m).replace("\\.", r"\.") for m in sorted({m for m, _ in RESOLVER_APIS})
    )
    resolver_names = "|".join(sorted({n for _, n in RESOLVER_APIS}))
    strings = "".join(
        f'        $name{number} = "{name}" ascii wide\n' for number, name in enumerate(names)
    )
    bind_module = re.escape(WDF_BIND.module).replace("\\.", r"\.")
    return (
        "/*\n"
        " * Generated from pooltagscan/drivers/apis.py by\n"
        " * pooltagscan.drivers.yarascan.pool_import_rule_source(); do not edit by hand.\n"
        " * The prefilter of `pooltagscan drivers`: a file that matches no rule tagged\n"
        " * pool_import is not disassembled. Imports by ordinal from a module that exports\n"
        " * pool APIs count, since the ordinal may name one.\n"
        " */\n"
        'import "pe"\n'
        "\n"
        "rule imports_pool_api : pool_import\n"
        "{\n"
        "    meta:\n"
        '        description = "imports an API that takes a pool tag, or imports by ordinal '
        'from a module exporting one"\n'
        "    condition:\n"
        "        for any module in pe.import_details : (\n"
        f"            module.library_name matches /^({module_pattern})$/i and\n"
        "            for any function in module.functions : (\n"
        "                defined function.ordinal or\n"
        f"                function.name matches /^({name_pattern})$/\n"
        "            )\n"
        "        )\n"
        "}\n"
        "\n"
        "rule resolves_pool_api : pool_import\n"
        "{\n"
        "    meta:\n"
        '        description = "names a pool API and imports a routine that resolves names '
        '(or is a VideoPort miniport, which gets VideoPortGetProcAddress as a callback)"\n'
        "    strings:\n"
        f"{strings}"
        "    condition:\n"
        "        any of ($name*) and (\n"
        f"            pe.imports(/^({resolver_modules})$/i, /^({resolver_names})$/) or\n"
        "            pe.imports(/^videoprt\\.sys$/i, /./)\n"
        "        )\n"
        "}\n"
        "\n"
        "rule kmdf_driver : pool_import\n"
        "{\n"
        "    meta:\n"
        '        description = "binds to KMDF, whose function table has pool APIs"\n'
        "    condition:\n"
        f"        pe.imports(/^{bind_module}$/i, /^{WDF_BIND.name}$/)\n"
        "}\n"
    )


def is_tag_like(value: int) -> bool:
    """Four printable ASCII bytes: what a tag written as a character literal looks like."""
    return all(0x20 <= (value >> shift) & 0xFF <= 0x7E for shift in (0, 8, 16, 24))


@dataclass(frozen=True)
class ImmediateHit:
    """Where a `tag_immediate` rule matched, relative to the scanned bytes."""

    rule: str
    offset: int
    length: int


def _compile_file(path: str) -> yara.Rules:
    check_rule_file(path)
    try:
        return yara.compile(filepath=path)
    except yara.SyntaxError as exc:
        raise InputError(path, f"YARA syntax error: {exc}") from None
    except yara.Error as exc:
        raise InputError(path, f"cannot load YARA rules: {exc}") from None


class RuleSet:
    """The compiled prefilter and immediate rules: built-in plus the user's files.

    Built once per process; `yara.Rules` objects are not picklable, so worker processes
    build their own from the same file list.
    """

    def __init__(self, user_files: Sequence[str] = ()):
        self.notes: list[str] = []
        self.user_files = tuple(user_files)
        builtin = builtin_rules_dir()
        files = sorted(str(p) for p in builtin.glob("*.yar")) if builtin else []
        prefilter_files: dict[str, str] = {}
        immediate_files: dict[str, str] = {}
        self.sources = tuple(files) + tuple(user_files)
        for number, path in enumerate(self.sources):
            tags = self._rule_tags(path, user=number >= len(files))
            namespace = f"r{number}"
            if PREFILTER_TAG in tags:
                prefilter_files[namespace] = path
            if IMMEDIATE_TAG in tags:
                immediate_files[namespace] = path
        has_builtin_prefilter = any(Path(p).name == _PREFILTER_FILE for p in files)
        if has_builtin_prefilter:
            self.prefilter = yara.compile(filepaths=prefilter_files)
        else:
            # Same rule text as rules/drivers/pool_imports.yar: results do not change.
            sources = {"builtin": pool_import_rule_source()}
            for namespace, path in prefilter_files.items():
                sources[namespace] = Path(path).read_text(encoding="utf-8", errors="replace")
            self.prefilter = yara.compile(sources=sources)
        self.immediates = yara.compile(filepaths=immediate_files) if immediate_files else None
        if self.immediates is None:
            self.notes.append(
                "no tag_immediate YARA rules found (neither the checkout's rules/drivers/ nor "
                "the installed pooltagscan/_rules/drivers/): the low-confidence fallback is off; "
                f"use --rules or set {RULES_ENV}"
            )

    @staticmethod
    def _rule_tags(path: str, user: bool) -> set[str]:
        rules = _compile_file(path)
        tags: set[str] = set()
        for rule in rules:
            wanted = {PREFILTER_TAG, IMMEDIATE_TAG} & set(rule.tags)
            if not wanted and user:
                raise InputError(
                    path,
                    f"rule {rule.identifier} is tagged neither {PREFILTER_TAG} nor "
                    f"{IMMEDIATE_TAG}, so pooltagscan would not use it",
                )
            tags |= wanted
        return tags

    def imports_pool_api(self, data: bytes) -> bool:
        """Whether any `pool_import` rule matches the whole file."""
        return any(
            PREFILTER_TAG in match.tags for match in self.prefilter.match(data=data, fast=True)
        )

    def immediate_hits(self, code: bytes) -> list[ImmediateHit]:
        """Every `tag_immediate` string match in a stretch of code bytes."""
        if self.immediates is None or not code:
            return []
        hits = []
        for match in self.immediates.match(data=code):
            if IMMEDIATE_TAG not in match.tags:
                continue
            for string in match.strings:
                for instance in string.instances:
                    hits.append(ImmediateHit(match.rule, instance.offset, instance.matched_length))
        return hits
