"""No hook name is recognised or built outside `replacement/hook_table.py` (issue 27).

An ast scan of every package module: a string that looks like a piece of a hook name (`hook_`,
`ln2.`, `.mlp`, `attn.`, `resid_pre`, `blocks.`, `{layer}`) may be written elsewhere (as a
name to hook, a key to look up, a message), but not used to *recognise* a name: not compared
(`==`, `in`, ...), not given to `endswith`/`startswith`/`replace`/`split`..., not a regex, not a
membership table consulted with a computed key. Hook names are not built by hand either:
`f"blocks.{layer}..."` goes through `hook_table.block_hook`. And a dotted name is not taken
apart with `split(".")` and its kin (short allowlist below, for names that are not hook names).
The scanner is tested on snippets too, so that a scan that finds nothing cannot pass silently.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("replacement", "circuits", "training", "analysis")
TABLE = Path("replacement/hook_table.py")

# a piece of a hook name (TL4 bridge, TL2 or a Hugging Face module path)
FRAGMENT = re.compile(
    r"hook_(?!source\b|name\b|name_out\b)|\bln(1|2|_final)(_post)?\.|\bmlp\.|\.mlp\b|\battn\.|resid_(pre|mid|post)"
    r"|\bblocks(\.|\\\.)|\{layer\}|\bself_attn\b"
)
STR_METHODS = {
    "endswith",
    "startswith",
    "removeprefix",
    "removesuffix",
    "replace",
    "split",
    "rsplit",
    "partition",
    "rpartition",
    "find",
    "rfind",
    "index",
    "rindex",
    "count",
    "format",
}
SPLITTERS = {"split", "rsplit", "partition", "rpartition"}
RE_FUNCTIONS = {"match", "search", "fullmatch", "sub", "subn", "compile", "findall", "split"}

# `split(".")` on dotted names that are not hook names: (file, enclosing function, why)
ALLOWED_SPLITS = {
    ("replacement/output_folder.py", "_our_temporary"): "a temporary file's name",
    ("training/direct_forward.py", "_twin"): "Hugging Face parameter paths",
}


def _text(node: ast.AST) -> str:
    """The literal text of a string constant or the constant parts of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    return ""


def _looks_like_hook(node: ast.AST) -> bool:
    """A string (or a tuple/list/set/dict literal of strings) with a hook-name fragment."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_looks_like_hook(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return any(k is not None and _looks_like_hook(k) for k in node.keys)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):  # set((...)), frozenset
        return node.func.id in ("set", "frozenset", "tuple") and any(
            _looks_like_hook(a) for a in node.args
        )
    return bool(FRAGMENT.search(_text(node)))


def _builds_block_name(node: ast.AST) -> bool:
    """An f-string or template that starts a block hook name by hand (`blocks.{layer}...`)."""
    text = _text(node)
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return isinstance(first, ast.Constant) and str(first.value).startswith("blocks.")
    return text.startswith("blocks.{")


class _Scan(ast.NodeVisitor):
    """Collects (line, what) for every hand recognition of a hook name in one module."""

    def __init__(self, path: str):
        self.path, self.found, self.function = path, [], "<module>"
        self.tables: set[str] = set()  # names bound to collections of hook-name fragments

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append((node.lineno, what))

    def scan(self, tree: ast.AST) -> list[tuple[int, str]]:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                if not isinstance(node.value, (ast.Constant, ast.JoinedStr)):
                    if _looks_like_hook(node.value):
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        self.tables |= {t.id for t in targets if isinstance(t, ast.Name)}
        self.visit(tree)
        return self.found

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def _is_table(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in self.tables

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        if any(_looks_like_hook(o) for o in operands):
            self._flag(node, "compares against a hook-name literal")
        elif any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and any(
            self._is_table(o) for o in node.comparators
        ):
            self._flag(node, "membership in a hand-made table of hook names")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._is_table(node.value) and not isinstance(node.slice, ast.Constant):
            self._flag(node, "looks a computed name up in a hand-made table of hook names")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "hasattr" and len(node.args) == 2:
            if _looks_like_hook(node.args[1]):
                self._flag(node, "recognises a module by a hook attribute (hook_table)")
        if isinstance(func, ast.Attribute):
            receiver, method = func.value, func.attr
            if isinstance(receiver, ast.Name) and receiver.id == "re":
                if method in RE_FUNCTIONS and node.args and _looks_like_hook(node.args[0]):
                    self._flag(node, f"re.{method} on a hook-name pattern")
            elif method in STR_METHODS and (
                _looks_like_hook(receiver) or any(_looks_like_hook(a) for a in node.args)
            ):
                self._flag(node, f".{method}() with a hook-name literal")
            elif method in SPLITTERS and node.args and _text(node.args[0]) == ".":
                if (self.path, self.function) not in ALLOWED_SPLITS:
                    self._flag(node, f'.{method}(".") takes a dotted name apart')
            elif method == "get" and (self._is_table(receiver) or isinstance(receiver, ast.Dict)):
                if _looks_like_hook(receiver) or self._is_table(receiver):
                    if node.args and not isinstance(node.args[0], ast.Constant):
                        self._flag(node, "looks a computed name up in a table of hook names")
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if _builds_block_name(node):
            self._flag(node, "builds a block hook name by hand (use hook_table.block_hook)")
        # the parts of an f-string are constants already judged as a whole: no generic_visit

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _builds_block_name(node):
            self._flag(node, "writes a `blocks.{layer}` template by hand (hook_table)")

    def visit_MatchValue(self, node: ast.MatchValue) -> None:
        if _looks_like_hook(node.value):
            self._flag(node, "matches a hook-name literal in a case")
        self.generic_visit(node)


def scan_source(source: str, path: str = "<snippet>") -> list[tuple[int, str]]:
    """Hand recognitions of hook names in `source` as (line, what)."""
    return _Scan(path).scan(ast.parse(source))


def _modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    files.append(ROOT / "sparse_circuits_cli.py")
    return [p for p in files if p.relative_to(ROOT) != TABLE]


def test_no_hook_name_is_matched_outside_the_table():
    problems = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        for line, what in scan_source(path.read_text(), rel):
            problems.append(f"{rel}:{line}: {what}")
    assert not problems, "hook names recognised by hand:\n" + "\n".join(problems)


def test_the_scan_covers_every_package():
    names = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert names == {*PACKAGES, "sparse_circuits_cli.py"}
    assert len(_modules()) > 100


@pytest.mark.parametrize(
    "snippet",
    [
        'ok = hook.endswith("attn.hook_pattern")',
        'ok = name.startswith("blocks.")',
        'ok = name == "blocks.0.ln2.hook_out"',
        'ok = suffix in ("hook_resid_pre", "hook_resid_mid")',
        'ok = f"blocks.{layer}.ln1_post.hook_scale" in model.hook_dict',
        'layer = re.match(r"blocks\\.(\\d+)\\.", hook)',
        'n = hook.name.replace("attn.hook_pattern", "ln1.hook_scale")',
        'layer = int(hook.name.split(".")[1])',
        'SITES = ("hook_mlp_out", "attn.hook_z")\nok = site not in SITES',
        'OFF = {"hook_resid_pre": 0.0}\nx = OFF[suffix]',
        'OFF = {"hook_resid_pre": 0.0}\nx = OFF.get(suffix)',
        'name = f"blocks.{layer}.hook_mlp_out"',
        'template = "blocks.{layer}.ln2.hook_normalized"',
        'ok = "{layer}" in template',
        'ok = rest[0] == "mlp" or hookpoint.endswith(".mlp")',
        'match name:\n    case "hook_embed":\n        pass',
        'ok = hasattr(module, "hook_normalized")',
    ],
)
def test_the_scan_finds_a_hand_match(snippet):
    assert scan_source(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        'hooks = [(block_hook(layer, "attn.hook_z"), keep)]',
        'x = frozen["ln_final.hook_scale"]',
        'raise HookError(f"the model has no hook {hook!r}; expected blocks.0.hook_mlp_out")',
        "ok = is_attention_pattern(hook.name)",
        'ok = block_hook(0, "ln1_post.hook_scale") in model.hook_dict',
        'parts = path.split("/")',
        'meta = {k: v for k, v in m.items() if k in ("hook_source", "processing")}',
    ],
)
def test_the_scan_lets_names_be_used(snippet):
    assert not scan_source(snippet), snippet


# ---- the table's helpers that replaced the hand matching, on known answers -------------------
def test_helpers_take_names_apart_as_the_hand_code_did():
    from replacement import hook_table as ht

    assert ht.hook_layer("blocks.12.ln2.hook_out") == 12 and ht.hook_layer("hook_embed") == -1
    assert ht.layer_pattern("blocks.3.attn.hook_z") == "blocks.{l}.attn.hook_z"
    assert ht.layer_pattern("ln_final.hook_scale") == "ln_final.hook_scale"
    assert ht.fill_template("blocks.{layer}.hook_mlp_out", 2) == "blocks.2.hook_mlp_out"
    assert ht.fill_template("hook_mlp_out", 2) == "blocks.2.hook_mlp_out"
    assert ht.fill_template("blocks.5.hook_mlp_out", 2) == "blocks.5.hook_mlp_out"
    assert ht.block_template("mlp.hook_in") == "blocks.{layer}.mlp.hook_in"
    assert ht.bridge_port("ln2.hook_out") == ("ln2", "out")
    assert ht.bridge_port("hook_in") == ("", "in")
    assert ht.bridge_port("attn.hook_pattern") == ("attn", None)
    assert ht.is_module_port("blocks.0.mlp.hook_in") and not ht.is_module_port("hook_in")
    assert not ht.is_module_port("blocks.0.hook_resid_pre")
    assert ht.is_attention_pattern("blocks.1.attn.hook_pattern")
    assert not ht.is_attention_pattern("blocks.1.attn.hook_attn_scores")


def test_helpers_recognise_through_the_aliases():
    from replacement import hook_table as ht

    assert ht.stream_point("blocks.1.hook_resid_mid") == "mid"
    assert ht.stream_point("blocks.1.ln2.hook_in") == "mid"  # an alias of resid_mid
    assert ht.stream_point("blocks.1.hook_out") == "post"
    assert ht.stream_point("blocks.1.hook_mlp_out") is None
    assert ht.is_attention_output("blocks.2.attn.o.hook_in", 2)  # an alias of attn.hook_z
    assert ht.is_attention_output("blocks.2.hook_attn_out", 2)
    assert not ht.is_attention_output("blocks.2.hook_attn_out", 1)
    # before Gemma's post-attention norm, attn.hook_out is not what enters the stream
    assert not ht.is_attention_output("blocks.2.attn.hook_out", 2, ht.GEMMA2)
    assert ht.is_attention_output("blocks.2.ln1_post.hook_out", 2, ht.GEMMA2)
    assert ht.is_block_site("ln2.hook_normalized") and not ht.is_block_site("hook_mlp_outt")


@pytest.mark.parametrize(
    "path,transcode,hooks",
    [
        ("layers.3.mlp", True, ("blocks.3.ln2.hook_out", "blocks.3.hook_mlp_out")),
        ("model.layers.3.mlp", False, ("blocks.3.hook_mlp_out",) * 2),
        ("layers.1.self_attn", False, ("blocks.1.hook_attn_out",) * 2),
        ("h.0.attn", True, None),
        ("gpt_neox.layers.4", False, ("blocks.4.hook_resid_post",) * 2),
        ("h.2", True, ("blocks.2.hook_resid_pre", "blocks.2.hook_resid_post")),
        ("layers.2.input_layernorm", False, None),
        ("embed_tokens", False, None),
    ],
)
def test_hugging_face_module_paths(path, transcode, hooks):
    from replacement.hook_table import from_hf_module

    assert from_hf_module(path, transcode) == hooks


def test_post_norm_wiring_is_checked_against_the_model():
    from types import SimpleNamespace

    from replacement.hook_table import post_norm_mismatch

    point, other = object(), object()
    as_table = {"blocks.0.ln2_post.hook_out": point, "blocks.0.hook_mlp_out": point}
    assert post_norm_mismatch(SimpleNamespace(hook_dict=as_table)) is None
    assert post_norm_mismatch(SimpleNamespace(hook_dict={})) is None  # no post-norms
    rewired = {"blocks.0.ln2_post.hook_out": point, "blocks.0.hook_mlp_out": other}
    assert post_norm_mismatch(SimpleNamespace(hook_dict=rewired)) == ("ln2_post", "hook_mlp_out")
