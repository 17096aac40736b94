#!/usr/bin/env python3
"""Extract the EMQX configuration keys the Kubernetes driver renders from EMQX's own schema modules.

Reads the Erlang schema modules of a checkout of emqx/emqx (never runs them) and writes a small JSON file: the root
names EMQX accepts and, for the structs we render into (listeners, limiter, mqtt, ssl_options, durable sessions), every field with its type, aliases and deprecation. deployments/emqx_schema_check.py checks rendered
configurations against it; a version is offered to customers only once its extract is committed.

How to run (the checkout is yours to bring; nothing of it is committed):

    git clone https://github.com/emqx/emqx.git /tmp/emqx && git -C /tmp/emqx checkout e5.9.1
    python scripts/emqx_schema_extract.py /tmp/emqx --version 5.9.1 --tag e5.9.1 \\
        --output deployments/emqx_schema/5.9.1.json

`--tag` is recorded as the source of the extract (with the checkout's commit when it is a git checkout). The
extraction understands the subset of Erlang these modules use for field lists (list literals, `++`, calls to
functions of the loaded modules, list comprehensions over literal lists, macros); anything else in a struct we need
makes it stop with an error naming the module and function, rather than guess.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass, field

MODULES = (
    "emqx_schema",
    "emqx_limiter_schema",
    "emqx_ds_schema",
    "emqx_license_schema",
)
# Structs whose every field is extracted, as (module, struct name). Structs they reference through the fields on
# RENDERED_PATH are followed too.
START_STRUCTS = (
    ("emqx_schema", "mqtt"),
    ("emqx_schema", "mqtt_tcp_listener"),
    ("emqx_schema", "mqtt_ssl_listener"),
    ("emqx_schema", "mqtt_ws_listener"),
    ("emqx_schema", "mqtt_wss_listener"),
    ("emqx_schema", "durable_sessions"),
    ("emqx_limiter_schema", "limiter"),
    # durable_storage.messages with the Enterprise backend (emqx_ds_schema db_schema/1: a union of backends).
    ("emqx_ds_schema", "builtin_raft"),
    # The CRL cache EMQX fetches client certificates' CRLs into (the device-certificate listener's CRL check).
    ("emqx_schema", "crl_cache"),
)
RENDERED_PATH = {"ssl_options", "limiter", "listeners", "http", "messages"}
ROOT_SOURCES = (
    ("emqx_schema", "roots"),
    ("emqx_limiter_schema", "roots"),
    ("emqx_license_schema", "roots"),
)
# Calls whose fields come from other applications at run time (schema hooks): they add nothing we render.
OPAQUE_CALLS = {"emqx_schema_hooks:list_injection_point", "emqx_schema_hooks:injection_point"}

BRACKETS = {"(": ")", "[": "]", "{": "}", "<<": ">>", "#{": "}"}
BLOCK_OPENERS = {"fun", "case", "begin", "if", "receive", "try", "maybe"}

TOKEN = re.compile(
    r"""
    (?P<ws>\s+|%[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<qatom>'(?:\\.|[^'\\])*')
  | (?P<char>\$\\?.)
  | (?P<number>\d+(?:\#[0-9a-zA-Z]+|_\d+)*(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<macro>\?\??[A-Za-z_][A-Za-z0-9_]*)
  | (?P<var>[A-Z_][A-Za-z0-9_]*)
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<op>\#\{|<<|>>|\|\||->|=>|:=|==|=:=|=/=|/=|=<|>=|\+\+|--|<-|<=|::|\.\.\.|\.\.|[-+*/=<>!?;:,.|(){}\[\]\#])
    """,
    re.VERBOSE,
)


class ExtractError(Exception):
    pass


@dataclass
class Tok:
    kind: str
    text: str


def tokenize(source: str) -> list[Tok]:
    tokens: list[Tok] = []
    position = 0
    while position < len(source):
        match = TOKEN.match(source, position)
        if not match:
            raise ExtractError(f"cannot read Erlang at {source[position : position + 40]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind == "ws":
            continue
        text = match.group()
        # `-if(...)`, `-else.`: preprocessor directives, not the `if ... end` block.
        if kind == "atom" and tokens and tokens[-1].text == "-" and (len(tokens) == 1 or tokens[-2].text == "."):
            kind = "directive"
        tokens.append(Tok(kind, text))
    return tokens


def closing_index(tokens: list[Tok], start: int) -> int:
    """Index of the token closing the bracket or block opened at `start`."""
    stack: list[str] = []
    index = start
    while index < len(tokens):
        tok = tokens[index]
        text = tok.text
        if tok.kind == "op" and text in BRACKETS:
            stack.append(BRACKETS[text])
        elif tok.kind == "atom" and text in BLOCK_OPENERS:
            nxt = tokens[index + 1] if index + 1 < len(tokens) else None
            # `fun name/2` and `fun mod:name/2` are references without `end`.
            if text != "fun" or (nxt is not None and nxt.text == "("):
                stack.append("end")
        elif stack and ((tok.kind == "op" and text == stack[-1]) or (tok.kind == "atom" and text == stack[-1])):
            stack.pop()
            if not stack:
                return index
        index += 1
    raise ExtractError("unbalanced brackets")


def split_top(tokens: list[Tok], separator: str) -> list[list[Tok]]:
    parts: list[list[Tok]] = [[]]
    index = 0
    while index < len(tokens):
        tok = tokens[index]
        opens = (tok.kind == "op" and tok.text in BRACKETS) or (
            tok.kind == "atom"
            and tok.text in BLOCK_OPENERS
            and (tok.text != "fun" or (index + 1 < len(tokens) and tokens[index + 1].text == "("))
        )
        if opens:
            end = closing_index(tokens, index)
            parts[-1].extend(tokens[index : end + 1])
            index = end + 1
            continue
        if tok.kind == "op" and tok.text == separator:
            parts.append([])
        else:
            parts[-1].append(tok)
        index += 1
    return parts


def text_of(tokens: list[Tok]) -> str:
    out = ""
    for tok in tokens:
        if out and (tok.kind in ("atom", "var", "number", "string", "qatom", "macro") and out[-1].isalnum()):
            out += " "
        out += tok.text
    return out


@dataclass
class Clause:
    args: list[list[Tok]]
    guard: list[Tok]
    body: list[Tok]


@dataclass
class Module:
    name: str
    functions: dict[tuple[str, int], list[Clause]] = field(default_factory=dict)
    macros: dict[str, list[Tok]] = field(default_factory=dict)
    # -type name() :: Low..High.  and  -typerefl_from_string({name/0, mod, to_bytesize}).
    type_ranges: dict[str, tuple[str, str]] = field(default_factory=dict)
    type_parsers: dict[str, str] = field(default_factory=dict)


def parse_module(name: str, source: str, edition: str) -> Module:
    module = Module(name)
    tokens = tokenize(source)
    forms: list[list[Tok]] = []
    current: list[Tok] = []
    index = 0
    while index < len(tokens):
        tok = tokens[index]
        opens = (tok.kind == "op" and tok.text in BRACKETS) or (
            tok.kind == "atom"
            and tok.text in BLOCK_OPENERS
            and (tok.text != "fun" or (index + 1 < len(tokens) and tokens[index + 1].text == "("))
        )
        if opens:
            end = closing_index(tokens, index)
            current.extend(tokens[index : end + 1])
            index = end + 1
            continue
        if tok.kind == "op" and tok.text == ".":
            forms.append(current)
            current = []
        else:
            current.append(tok)
        index += 1
    # -if/-ifdef/-else/-endif: keep the branch of the given edition.
    keep_stack: list[bool] = []
    for form in forms:
        if not form:
            continue
        if form[0].text == "-" and len(form) > 1:
            directive = form[1].text
            if directive in ("if", "ifdef", "ifndef"):
                condition = text_of(form[2:])
                if directive == "if" and "EMQX_RELEASE_EDITION" in condition:
                    keep = (f"=={edition}" in condition.replace(" ", "")) != ("=/=" in condition)
                elif directive == "ifndef" and "EMQX_RELEASE_EDITION" in condition:
                    keep = False  # the build defines the edition
                elif directive == "ifdef" and "TEST" in condition:
                    keep = False
                else:
                    keep = directive != "ifdef"
                keep_stack.append(keep)
                continue
            if directive == "else":
                keep_stack[-1] = not keep_stack[-1]
                continue
            if directive == "endif":
                keep_stack.pop()
                continue
            if not all(keep_stack):
                continue
            if directive == "type" and len(form) > 5 and form[3].text == "(" and form[4].text == ")":
                parts = [t.text for t in form[6:]]
                if ".." in parts:
                    cut = parts.index("..")
                    module.type_ranges[form[2].text] = ("".join(parts[:cut]), "".join(parts[cut + 1 :]))
                continue
            if directive == "typerefl_from_string":
                spec = text_of(form[2:]).replace(" ", "")
                found = re.match(r"\(\{([a-z_]+)/0,[a-z_]+,([a-z_]+)\}\)", spec)
                if found:
                    module.type_parsers[found[1]] = found[2]
                continue
            if directive == "define":
                inner = split_top(form[3:-1], ",")
                head = inner[0]
                module.macros[head[0].text] = [tok for part in inner[1:] for tok in part]
            continue
        if not all(keep_stack):
            continue
        if form[0].kind not in ("atom", "qatom"):
            continue
        for clause_tokens in split_top(form, ";"):
            if not clause_tokens or clause_tokens[0].kind not in ("atom", "qatom") or len(clause_tokens) < 2:
                continue
            if clause_tokens[1].text != "(":
                continue
            fname = clause_tokens[0].text
            close = closing_index(clause_tokens, 1)
            args = [a for a in split_top(clause_tokens[2:close], ",") if a]
            rest = clause_tokens[close + 1 :]
            arrow = next((i for i, t in enumerate(rest) if t.text == "->"), None)
            if arrow is None:
                continue
            module.functions.setdefault((fname, len(args)), []).append(Clause(args, rest[:arrow], rest[arrow + 1 :]))
    return module


class Extractor:
    def __init__(self, checkout: pathlib.Path, edition: str) -> None:
        self.checkout = checkout
        self.edition = edition
        self.modules: dict[str, Module] = {}
        self.include_macros: dict[str, list[Tok]] = {}
        self._load_includes()
        for name in MODULES:
            path = self._find(f"{name}.erl")
            if path is not None:  # emqx_ds_schema and emqx_license_schema are younger than 5.1
                self.modules[name] = parse_module(name, path.read_text(errors="replace"), edition)
        if "emqx_schema" not in self.modules:
            raise ExtractError(f"emqx_schema.erl not found under {checkout}: is it a checkout of emqx/emqx?")

    def _find(self, filename: str) -> pathlib.Path | None:
        for base in ("apps", "lib-ee"):
            root = self.checkout / base
            if root.is_dir():
                found = sorted(root.rglob(filename))
                found = [p for p in found if "/test/" not in str(p)]
                if found:
                    return found[0]
        return None

    def _load_includes(self) -> None:
        include = self.checkout / "apps" / "emqx" / "include"
        for path in sorted(include.glob("*.hrl")) if include.is_dir() else []:
            try:
                module = parse_module(path.name, path.read_text(errors="replace"), self.edition)
            except ExtractError:
                continue
            for key, value in module.macros.items():
                self.include_macros.setdefault(key, value)

    def macro(self, module: Module, name: str) -> list[Tok] | None:
        key = name.lstrip("?")
        if key == "MODULE":
            return [Tok("atom", module.name)]
        return module.macros.get(key) or self.include_macros.get(key)

    # -- evaluation of field lists ------------------------------------------------------------------------
    def call(self, module: Module, fname: str, args: list[list[Tok]]) -> list[dict]:
        if ":" in fname:
            mod_name, _, fname = fname.partition(":")
            if f"{mod_name}:{fname}" in OPAQUE_CALLS:
                return []
            target = self.modules.get(mod_name)
            if target is None:
                raise ExtractError(f"{module.name}: field list calls {mod_name}:{fname}, a module not loaded")
            module = target
        clauses = module.functions.get((fname, len(args)))
        if not clauses:
            raise ExtractError(f"{module.name}: no function {fname}/{len(args)}")
        clause = self._select(module, clauses, args)
        bindings = {}
        for param, arg in zip(clause.args, args, strict=True):
            if len(param) == 1 and param[0].kind == "var":
                bindings[param[0].text] = arg
        return self.fields_of_body(module, clause.body, bindings, f"{fname}/{len(args)}")

    def _select(self, module: Module, clauses: list[Clause], args: list[list[Tok]]) -> Clause:
        for clause in clauses:
            if all(
                (len(param) == 1 and param[0].kind == "var") or text_of(param) == text_of(arg)
                for param, arg in zip(clause.args, args, strict=True)
            ):
                return clause
        raise ExtractError(f"{module.name}: no clause matches ({', '.join(text_of(a) for a in args)})")

    def fields_of_body(self, module: Module, body: list[Tok], bindings: dict, where: str) -> list[dict]:
        expressions = [e for e in split_top(body, ",") if e]
        return self.fields_of_expr(module, expressions[-1], bindings, where)

    def fields_of_expr(self, module: Module, expr: list[Tok], bindings: dict, where: str) -> list[dict]:
        fields: list[dict] = []
        for term in self._split_concat(expr):
            fields.extend(self.fields_of_term(module, term, bindings, where))
        return fields

    def _split_concat(self, expr: list[Tok]) -> list[list[Tok]]:
        parts: list[list[Tok]] = [[]]
        index = 0
        while index < len(expr):
            tok = expr[index]
            if tok.kind == "op" and tok.text in BRACKETS:
                end = closing_index(expr, index)
                parts[-1].extend(expr[index : end + 1])
                index = end + 1
                continue
            if tok.kind == "op" and tok.text == "++":
                parts.append([])
            else:
                parts[-1].append(tok)
            index += 1
        return [p for p in parts if p]

    def fields_of_term(self, module: Module, term: list[Tok], bindings: dict, where: str) -> list[dict]:
        first = term[0]
        if first.kind == "var" and len(term) == 1 and first.text in bindings:
            return self.fields_of_expr(module, bindings[first.text], bindings, where)
        if first.text == "[" and closing_index(term, 0) == len(term) - 1:
            inner = term[1:-1]
            comprehension = split_top(inner, "||")
            if len(comprehension) == 2:
                return self._comprehension(module, comprehension[0], comprehension[1], bindings, where)
            items = split_top(inner, "|")
            fields = [self._item(module, item, bindings, where) for item in split_top(items[0], ",") if item]
            if len(items) == 2:  # [A, B | Tail]
                fields.extend(self.fields_of_expr(module, items[1], bindings, where))
            return fields
        # A call: name(...) or mod:name(...)
        if first.kind == "atom":
            if len(term) > 2 and term[1].text == ":" and term[2].kind == "atom" and term[3].text == "(":
                name, open_index = f"{first.text}:{term[2].text}", 3
            elif term[1].text == "(":
                name, open_index = first.text, 1
            else:
                raise ExtractError(f"{module.name} {where}: cannot read {text_of(term)[:80]!r}")
            close = closing_index(term, open_index)
            args = [self._substitute(a, bindings) for a in split_top(term[open_index + 1 : close], ",") if a]
            if name == "lists:foldl":
                return self._foldl(module, args, where)
            return self.call(module, name, args)
        raise ExtractError(f"{module.name} {where}: cannot read {text_of(term)[:80]!r}")

    def _item(self, module: Module, item: list[Tok], bindings: dict, where: str) -> dict:
        """One list element: a field tuple, or a call of a function that returns one (`enable(true)`)."""
        item = self._substitute(item, bindings)
        if item[0].text != "{" and item[0].kind == "atom" and len(item) > 1 and item[1].text == "(":
            close = closing_index(item, 1)
            args = [a for a in split_top(item[2:close], ",") if a]
            clauses = module.functions.get((item[0].text, len(args)))
            if clauses:
                clause = self._select(module, clauses, args)
                local = {p[0].text: a for p, a in zip(clause.args, args, strict=True) if p[0].kind == "var"}
                body = [e for e in split_top(clause.body, ",") if e][-1]
                return self.field_of_tuple(module, body, local, f"{item[0].text}/{len(args)}")
        return self.field_of_tuple(module, item, bindings, where)

    def _substitute(self, tokens: list[Tok], bindings: dict) -> list[Tok]:
        out: list[Tok] = []
        for tok in tokens:
            if tok.kind == "var" and tok.text in bindings:
                out.extend(bindings[tok.text])
            else:
                out.append(tok)
        return out

    def _literal_list(self, module: Module, tokens: list[Tok], where: str) -> list[list[Tok]]:
        """Items of a literal list, or of a call to a function whose body is one."""
        if tokens[0].kind == "macro" and len(tokens) == 1:
            expanded = self.macro(module, tokens[0].text)
            if expanded:
                tokens = expanded
        if tokens[0].text == "[":
            return [item for item in split_top(tokens[1:-1], ",") if item]
        if tokens[0].kind == "atom" and len(tokens) >= 3 and tokens[1].text == "(":
            if tokens[0].text == "lists" or (len(tokens) > 2 and tokens[1].text == ":"):
                pass
            clauses = module.functions.get((tokens[0].text, 0))
            if clauses:
                body = [e for e in split_top(clauses[0].body, ",") if e][-1]
                return self._literal_list(module, body, where)
        if tokens[0].text == "lists" and tokens[2].text == "zip":
            close = closing_index(tokens, 3)
            args = [a for a in split_top(tokens[4:close], ",") if a]
            left = self._literal_list(module, args[0], where)
            right = self._literal_list(module, args[1], where)
            return [[Tok("op", "{"), *a, Tok("op", ","), *b, Tok("op", "}")] for a, b in zip(left, right, strict=False)]
        raise ExtractError(f"{module.name} {where}: generator over {text_of(tokens)[:60]!r} is not a literal list")

    def _comprehension(self, module: Module, head: list[Tok], qualifiers: list[Tok], bindings: dict, where: str):
        generators: list[tuple[list[Tok], list[list[Tok]]]] = []
        for qualifier in split_top(qualifiers, ","):
            arrow = next((i for i, t in enumerate(qualifier) if t.text == "<-"), None)
            if arrow is None:
                words = [t.text for t in qualifier]
                negate = words[0] == "not"
                var = qualifier[-1].text
                value = text_of(bindings.get(var, [])) if var in bindings else None
                if value not in ("true", "false"):
                    raise ExtractError(f"{module.name} {where}: comprehension filter {' '.join(words)!r} is unknown")
                if (value == "true") == negate:
                    return []
                continue
            pattern, source = qualifier[:arrow], qualifier[arrow + 1 :]
            generators.append((pattern, self._literal_list(module, self._substitute(source, bindings), where)))
        results = []
        for pattern, items in generators:
            for item in items:
                local = dict(bindings)
                self._bind(pattern, item, local)
                if len(head) == 1 and head[0].kind == "var" and local[head[0].text][0].text == "{":
                    results.append(self.field_of_tuple(module, local[head[0].text], local, where))
                elif len(head) == 1 and head[0].kind == "var":
                    results.extend(self.fields_of_expr(module, local[head[0].text], local, where))
                else:
                    results.append(self.field_of_tuple(module, head, local, where))
        return results

    def _bind(self, pattern: list[Tok], value: list[Tok], bindings: dict) -> None:
        if len(pattern) == 1 and pattern[0].kind == "var":
            bindings[pattern[0].text] = value
            return
        if pattern[0].text == "{" and value[0].text == "{":
            for p, v in zip(split_top(pattern[1:-1], ","), split_top(value[1:-1], ","), strict=False):
                self._bind(p, v, bindings)

    def _foldl(self, module: Module, args: list[list[Tok]], where: str) -> list[dict]:
        # lists:foldl(fun make_x/2, [], names()): each name adds the fields make_x builds for it (e5.9.0
        # emqx_limiter_schema fields(mqtt): `<name>_rate` and `<name>_burst`).
        fun_ref, _acc, names = args
        fname = fun_ref[1].text
        clause = module.functions[(fname, 2)][0]
        name_var = clause.args[0][0].text
        body_text = text_of(clause.body)
        suffixes = re.findall(r'NameStr\+\+"(_[a-z]+)"', body_text.replace(" ", ""))
        if not suffixes or name_var != "Name":
            raise ExtractError(f"{module.name} {where}: {fname}/2 does not build names the known way")
        results = []
        for item in self._literal_list(module, names, where):
            base = item[0].text
            result_expr = [e for e in split_top(clause.body, ",") if e][-1]
            # [{Rate, ?HOCON(...)}, {Burst, ?HOCON(...)} | Fields]
            inner = split_top(result_expr[1:-1], "|")[0]
            tuples = [t for t in split_top(inner, ",") if t]
            for suffix, tup in zip(suffixes, tuples, strict=True):
                local = {tup[1].text: [Tok("atom", base + suffix)]}
                results.append(self.field_of_tuple(module, tup, local, where))
        return results

    # -- one field ------------------------------------------------------------------------------------------
    def field_of_tuple(self, module: Module, tup: list[Tok], bindings: dict, where: str) -> dict:
        tup = self._substitute(tup, bindings)
        if tup[0].text != "{":
            raise ExtractError(f"{module.name} {where}: expected a field tuple, found {text_of(tup)[:80]!r}")
        parts = split_top(tup[1:-1], ",")
        if len(parts) != 2:
            raise ExtractError(f"{module.name} {where}: field tuple {text_of(tup)[:80]!r} is not {{Name, Schema}}")
        name_tokens, schema = parts
        name = self._name(module, name_tokens, where)
        type_tokens, meta = self._schema(module, schema, where)
        entry = {"name": name, "type": self.type_of(module, type_tokens, where)}
        meta_text = text_of(meta)
        aliases = re.search(r"aliases=>\[([^\]]*)\]", meta_text.replace(" ", ""))
        if aliases:
            entry["aliases"] = [a.strip("'\"") for a in aliases[1].split(",") if a]
        if re.search(r"deprecated=>\{since", meta_text.replace(" ", "")):
            entry["deprecated"] = True
        validator = re.search(r"validator=>fun(?:\?MODULE:|[a-z_]+:)?([a-z_0-9]+)/1", meta_text.replace(" ", ""))
        if validator:
            bounds = self._validator_bounds(module, validator[1])
            if bounds:
                entry["type"] = {**entry["type"], **bounds}
        return entry

    def _name(self, module: Module, tokens: list[Tok], where: str) -> str:
        if len(tokens) == 1 and tokens[0].kind in ("atom", "string", "qatom"):
            return tokens[0].text.strip("\"'")
        if len(tokens) == 1 and tokens[0].kind == "macro":
            value = self.macro(module, tokens[0].text)
            if value and len(value) == 1:
                return value[0].text.strip("\"'")
            if value and value[0].text == "<<" and value[1].kind == "string":
                return value[1].text.strip('"')
            return tokens[0].text  # an unresolved macro: the field exists under a name we do not render
        raise ExtractError(f"{module.name} {where}: field name {text_of(tokens)!r} is not a literal")

    def _schema(self, module: Module, schema: list[Tok], where: str) -> tuple[list[Tok], list[Tok]]:
        head = schema[0].text
        if head == "#{":
            for entry in split_top(schema[1:-1], ","):
                if entry and entry[0].text == "type" and entry[1].text == "=>":
                    return entry[2:], schema
            raise ExtractError(f"{module.name} {where}: schema map without type")
        if head in ("sc", "mk", "?HOCON", "?SC") or (head == "hoconsc" and schema[2].text == "mk"):
            open_index = 1 if schema[1].text == "(" else 3
            close = closing_index(schema, open_index)
            args = [a for a in split_top(schema[open_index + 1 : close], ",") if a]
            return args[0], (args[1] if len(args) > 1 else [])
        if head in ("db_schema",):
            return [Tok("atom", "durable_storage_db")], []
        if text_of(schema[:3]) == "emqx_schema_secret:mk":
            return [Tok("atom", "binary"), Tok("op", "("), Tok("op", ")")], schema
        # A schema we cannot read (a function schema, a helper of another application): the field is known to
        # exist but its type is not, so the checker refuses any value rendered into it.
        return [Tok("atom", "unreadable_schema")], []

    def _validator_bounds(self, module: Module, fname: str) -> dict:
        clauses = module.functions.get((fname, 1)) or []
        bounds: dict[str, int] = {}
        for clause in clauses:
            guard = text_of(clause.guard).replace(" ", "")
            body = text_of(clause.body)
            if "error" not in body:
                continue
            for op, raw in re.findall(r"[A-Z][A-Za-z]*(<|>)(\?[A-Z_]+|\d+)", guard):
                value = raw
                if raw.startswith("?"):
                    macro = self.macro(module, raw)
                    value = macro[0].text if macro and len(macro) == 1 else ""
                if value.isdigit():
                    bounds["min" if op == "<" else "max"] = int(value) if op == ">" else int(value)
        return bounds

    # -- types -------------------------------------------------------------------------------------------------
    def type_of(self, module: Module, tokens: list[Tok], where: str) -> dict:
        if not tokens:
            return {"kind": "unknown", "text": ""}
        try:
            return self._type_of(module, tokens, where)
        except (IndexError, StopIteration, ValueError, ExtractError):
            return {"kind": "unknown", "text": text_of(tokens)[:120]}

    def _type_of(self, module: Module, tokens: list[Tok], where: str) -> dict:
        text = text_of(tokens).replace(" ", "")
        simple = {
            "pos_integer()": {"kind": "integer", "min": 1},
            "non_neg_integer()": {"kind": "integer", "min": 0},
            "integer()": {"kind": "integer"},
            "boolean()": {"kind": "boolean"},
            "binary()": {"kind": "string"},
            "string()": {"kind": "string"},
            "atom()": {"kind": "string"},
            "file()": {"kind": "string"},
            "ip_port()": {"kind": "ip_port"},
            "port_number()": {"kind": "integer", "min": 1, "max": 65535},
        }
        bare = re.sub(r"^(?:emqx_schema|typerefl|hoconsc|emqx_limiter_schema):", "", text)
        if bare in simple:
            return dict(simple[bare])
        if re.fullmatch(
            r"(?:emqx_schema:)?(duration|duration_ms|duration_s|timeout_duration|timeout_duration_ms|"
            r"timeout_duration_s)\(\)",
            text,
        ):
            return {"kind": "duration"}
        local_type = re.fullmatch(r"([a-z_]+)\(\)", text)
        if local_type and local_type[1] in module.type_ranges:
            low, high = module.type_ranges[local_type[1]]
            kind = "bytesize" if module.type_parsers.get(local_type[1]) == "to_bytesize" else "integer"
            bounds = {"min": self._int(module, low), "max": self._int(module, high)}
            return {"kind": kind, **{k: v for k, v in bounds.items() if v is not None}}
        if re.fullmatch(r"(?:emqx_schema:)?(bytesize|wordsize)\(\)", text):
            return {"kind": "bytesize"}
        if re.fullmatch(r"(?:emqx_schema:)?percent\(\)", text):
            return {"kind": "percent"}
        if re.fullmatch(r"(?:emqx_limiter_schema:)?(rate|rate_type)\(\)", text):
            return {"kind": "rate"}
        if re.fullmatch(r"(?:emqx_limiter_schema:)?(burst|burst_type|burst_rate|burst_rate_type|initial)\(\)", text):
            return {"kind": "limiter_other"}
        if text == "unreadable_schema":
            return {"kind": "unknown", "text": "schema not readable"}
        if text == "durable_storage_db":
            return {"kind": "struct", "ref": "emqx_ds_schema:db"}
        match = re.fullmatch(r"(?:typerefl:)?range\((-?\d+|\?\w+),(-?\d+|\?\w+|infinity)\)", text)
        if match:
            low, high = (self._int(module, v) for v in match.groups())
            return {"kind": "integer", "min": low, **({"max": high} if high is not None else {})}
        if tokens[0].kind == "atom" and len(tokens) == 1:
            return {"kind": "enum", "values": [tokens[0].text]}
        head = text.split("(", 1)[0]
        if head in ("hoconsc:enum", "enum", "?ENUM"):
            values = re.findall(r"[a-z_0-9]+", text[len(head) :])
            return {"kind": "enum", "values": values}
        if head in ("hoconsc:union", "union", "?UNION"):
            open_index = next(i for i, t in enumerate(tokens) if t.text == "(")
            close = closing_index(tokens, open_index)
            inner = tokens[open_index + 1 : close]
            if inner and inner[0].text == "[":
                inner = inner[1:-1]
            return {"kind": "union", "members": [self.type_of(module, m, where) for m in split_top(inner, ",") if m]}
        if head in ("hoconsc:array", "array", "?ARRAY"):
            open_index = next(i for i, t in enumerate(tokens) if t.text == "(")
            return {"kind": "array", "of": self.type_of(module, tokens[open_index + 1 : -1], where)}
        if head in ("hoconsc:map", "map", "?MAP"):
            open_index = next(i for i, t in enumerate(tokens) if t.text == "(")
            args = split_top(tokens[open_index + 1 : -1], ",")
            return {"kind": "map", "of": self.type_of(module, args[-1], where)}
        if head in ("ref", "hoconsc:ref", "?R_REF", "?REF", "hoconsc:mk_ref"):
            open_index = next(i for i, t in enumerate(tokens) if t.text == "(")
            close = closing_index(tokens, open_index)
            args = [a for a in split_top(tokens[open_index + 1 : close], ",") if a]
            target_module = module.name
            if len(args) == 2:
                target_module = self._atom(module, args[0])
            name = args[-1][0].text.strip("\"'")
            return {"kind": "struct", "ref": f"{target_module}:{name}"}
        return {"kind": "unknown", "text": text[:120]}

    def _atom(self, module: Module, tokens: list[Tok]) -> str:
        if tokens[0].kind == "macro":
            value = self.macro(module, tokens[0].text)
            return value[0].text if value else tokens[0].text
        return tokens[0].text

    def _int(self, module: Module, raw: str) -> int | None:
        if raw == "infinity":
            return None
        if raw.startswith("?"):
            macro = self.macro(module, raw)
            raw = macro[0].text if macro else ""
        return int(raw)

    # -- structs -------------------------------------------------------------------------------------------
    def struct(self, module_name: str, name: str) -> list[dict] | None:
        """The fields of fields(name), or None when this release has no such struct."""
        module = self.modules[module_name]
        for arg in (f'"{name}"', name):
            clauses = module.functions.get(("fields", 1)) or []
            for clause in clauses:
                if text_of(clause.args[0]) == arg:
                    return self.fields_of_body(module, clause.body, {}, f"fields({arg})")
        return None

    def roots(self) -> list[str]:
        names: set[str] = set()
        for module_name, fname in ROOT_SOURCES:
            module = self.modules.get(module_name)
            if module is None:
                continue
            for (name, arity), clauses in module.functions.items():
                if name != fname:
                    continue
                for clause in clauses:
                    if arity == 1 and not (len(clause.args[0]) == 1 and clause.args[0][0].kind == "atom"):
                        continue
                    try:
                        names.update(f["name"] for f in self.fields_of_body(module, clause.body, {}, fname))
                    except ExtractError:
                        # roots/0 of emqx_schema is `roots(high) ++ ...`, which the arity-1 clauses cover.
                        if arity == 0 and module_name == "emqx_schema":
                            continue
                        raise
        return sorted(names)

    def extract(self) -> dict:
        structs: dict[str, list[dict]] = {}
        pending = [f"{m}:{n}" for m, n in START_STRUCTS]
        while pending:
            key = pending.pop()
            if key in structs:
                continue
            module_name, _, name = key.partition(":")
            if module_name not in self.modules:
                continue
            fields = self.struct(module_name, name)
            if fields is None:
                continue
            structs[key] = fields
            for entry in fields:
                if entry["name"] in RENDERED_PATH or key.endswith("_listener"):
                    for ref in _refs(entry["type"]):
                        if entry["name"] in RENDERED_PATH:
                            pending.append(ref)
        return {"roots": self.roots(), "structs": dict(sorted(structs.items()))}


def _refs(type_: dict) -> list[str]:
    if type_.get("kind") == "struct":
        return [type_["ref"]]
    out = []
    for key in ("members",):
        for member in type_.get(key, []):
            out.extend(_refs(member))
    if "of" in type_:
        out.extend(_refs(type_["of"]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python scripts/emqx_schema_extract.py /tmp/emqx --version 5.8.6 --tag v5.8.6 "
        "--output deployments/emqx_schema/5.8.6.json (check /tmp/emqx out at the tag first). The extract records "
        "the keys of listeners, limiter, mqtt, ssl_options and durable_sessions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkout", type=pathlib.Path, help="a checkout of emqx/emqx at the tag to extract")
    parser.add_argument("--version", required=True, help="the EMQX release this is, e.g. 5.8.6")
    parser.add_argument("--tag", required=True, help="the emqx/emqx tag the checkout is at, e.g. v5.8.6 or e5.9.1")
    parser.add_argument("--edition", default="ee", choices=["ee", "ce"], help="build edition (default ee)")
    parser.add_argument("--output", type=pathlib.Path, help="write the JSON here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        extracted = Extractor(args.checkout, args.edition).extract()
    except ExtractError as exc:
        print(f"emqx_schema_extract: {exc}", file=sys.stderr)
        return 2
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(args.checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    document = {
        "version": args.version,
        "tag": args.tag,
        "commit": commit,
        "edition": args.edition,
        "source": "emqx/emqx " + ", ".join(f"{m}.erl" for m in MODULES),
        **extracted,
    }
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
