"""lm-eval tasks a job names, checked at submit without lm-eval (its task index costs seconds;
the prepare-data step checks the names against it: training.evaluation.tasks).

Task files are lm-eval task YAML. lm-eval's YAML may carry `!function module.fn` tags, which load
and run Python (from the task's folder, or any importable module), and its prompt templates are
Jinja, which lm-eval renders outside a sandbox: both are code. Without `allow_task_code` a
`!function` tag, a Python file and a template that reaches for underscore attributes are
refused here; the evaluate step also renders templates in Jinja's sandbox then.

    check_evaluation(spec.evaluation, read)   -> the task names the job runs, or InvalidRequest
                                                  (read: boundary.eval_task_files.read_task_file)
    lm_eval_problem(model)                     -> why lm-eval cannot load this model, or None
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from .errors import InvalidRequest
from .spec import EvaluationSpec, ModelSpec

MAX_TASK_FILE_BYTES = 1 << 20
FUNCTION_TAG = "!function"
# What lm-eval's built-in task names look like (arc_easy, mmlu_pro, gsm8k_cot, ...).
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
YAML_SUFFIXES = (".yaml", ".yml")
# A Jinja block reaching for private attributes (`__class__`, `|attr(...)`): the way out of
# a template into Python.
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_TEMPLATE_CODE = re.compile(r"__|\battr\s*\(|\[\s*['\"]_|\.\s*_")
# Llama 3's special tokens sit at 128000-128255 (training.evaluation.tokenizer).
LLAMA3_VOCAB = 128256


@dataclass(frozen=True)
class Tagged:
    """A YAML node with a tag (`!function utils.process`), kept as written."""

    tag: str
    value: Any


class _Loader(yaml.SafeLoader):
    """YAML that accepts any tag, so a task file parses whatever it names."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Tagged(node.tag, value)


_Loader.add_multi_constructor("!", _tagged)


class _Dumper(yaml.SafeDumper):
    """Writes Tagged values back with their tag (a task file rewritten by the step)."""


def _represent_tagged(dumper: yaml.SafeDumper, data: Tagged) -> yaml.Node:
    if isinstance(data.value, list):
        return dumper.represent_sequence(data.tag, data.value)
    if isinstance(data.value, dict):
        return dumper.represent_mapping(data.tag, data.value)
    return dumper.represent_scalar(data.tag, str(data.value))


_Dumper.add_representer(Tagged, _represent_tagged)


def load_task_yaml(text: str | bytes, where: str) -> dict[str, Any]:
    """A task file's mapping; InvalidRequest naming the file when it is not one."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: tags stay inert
    except yaml.YAMLError as e:
        raise InvalidRequest(f"evaluation task file {where} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"evaluation task file {where} is not an lm-eval task (a YAML mapping with `task:`)"
        )
    return data


def dump_task_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every leaf (and tagged node) with its key path."""
    if isinstance(value, Tagged):
        return [(path, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _walk(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _walk(v, f"{path}[{i}]")]
    return [(path, value)]


def code_in(data: dict[str, Any]) -> list[str]:
    """Where a task file would run code: `!function` tags and escaping templates."""
    found: list[str] = []
    for path, value in _walk(data):
        if isinstance(value, Tagged):
            found.append(f"{path}: {value.tag} {value.value}")
        elif isinstance(value, str) and any(
            _TEMPLATE_CODE.search(block) for block in _TEMPLATE.findall(value)
        ):
            found.append(f"{path}: a template that reaches for private attributes")
    return found


def defined_names(data: dict[str, Any]) -> list[str]:
    """The task, group and tag names a task file defines."""
    names: list[str] = []
    for key in ("task", "group"):
        if isinstance(data.get(key), str):
            names.append(data[key])
    tags = data.get("tag")
    names += [tags] if isinstance(tags, str) else [t for t in tags or [] if isinstance(t, str)]
    return names


def file_name(location: str) -> str:
    """The file name of a task file's location (path, s3:// or https:// URL)."""
    return PurePosixPath(location.split("?", 1)[0].rstrip("/")).name


def is_code_file(location: str) -> bool:
    return file_name(location).endswith(".py")


def check_task_file(location: str, text: str | bytes, allow_task_code: bool) -> list[str]:
    """The names one task file defines; InvalidRequest saying what to change."""
    if is_code_file(location):
        if not allow_task_code:
            raise InvalidRequest(
                f"evaluation task file {location} is Python code, which lm-eval would run: "
                "drop it, or set evaluation.allow_task_code: true (refused while the server's "
                "auth is on)"
            )
        return []
    data = load_task_yaml(text, location)
    other_tags = sorted({v.tag for _, v in _walk(data) if isinstance(v, Tagged)} - {FUNCTION_TAG})
    if other_tags:
        raise InvalidRequest(
            f"evaluation task file {location} uses YAML tags lm-eval does not read: "
            f"{', '.join(other_tags)} (only !function)"
        )
    names = defined_names(data)
    if file_name(location).endswith(YAML_SUFFIXES) and not names:
        raise InvalidRequest(
            f"evaluation task file {location} defines no task: lm-eval task YAML names it with "
            "`task: <name>` (a group with `group:` and a `task:` list)"
        )
    bad = [n for n in names if not TASK_NAME.match(n)]
    if bad:
        raise InvalidRequest(
            f"evaluation task file {location}: {bad[0]!r} is not a task name (letters, digits, "
            "'_', '-', '.')"
        )
    code = code_in(data)
    if code and not allow_task_code:
        raise InvalidRequest(
            f"evaluation task file {location} runs code ({'; '.join(code[:3])}): lm-eval would "
            "execute it. Use plain fields (doc_to_text/doc_to_target templates over the data's "
            "columns, built-in metrics), or set evaluation.allow_task_code: true (refused while "
            "the server's auth is on)"
        )
    return names


def check_evaluation(evaluation: EvaluationSpec, read: Callable[[str], bytes]) -> list[str]:
    """The lm-eval tasks the job runs (those named, else every one the files define), each
    defined by a task file or plausibly built-in; every file read with `read` and checked."""
    seen: dict[str, str] = {}
    defined: list[str] = []
    for location in evaluation.task_files:
        name = file_name(location)
        if name in seen:
            raise InvalidRequest(
                f"evaluation task files {seen[name]} and {location} have the same file name "
                f"{name!r}: they are placed in one folder, rename one"
            )
        seen[name] = location
        defined += check_task_file(location, read(location), evaluation.allow_task_code)
    for task in evaluation.tasks:
        if task not in defined and not TASK_NAME.match(task):
            raise InvalidRequest(
                f"evaluation task {task!r} is neither defined by a task file "
                f"({', '.join(defined) or 'none given'}) nor an lm-eval task name (letters, "
                "digits, '_', '-', '.')"
            )
    return list(evaluation.tasks) or list(dict.fromkeys(defined))


def lm_eval_problem(model: ModelSpec) -> str | None:
    """Why lm-eval's `hf` model type cannot evaluate this model, or None. A model with only a
    tiktoken tokenizer gets a Hugging Face tokenizer made by the evaluate step, which needs
    Llama 3's special-token ids; weights on a volume are checked by the step."""
    if model.hf_tokenizer or model.layout is None:
        return None
    if not model.tokenizer_file:
        return (
            f"{model.name} has no tokenizer lm-eval can load (tokenizer.json, or a Llama 3 "
            "tiktoken tokenizer.model)"
        )
    if model.arch is not None and model.arch.vocab_size < LLAMA3_VOCAB:
        return (
            f"{model.name} has a tiktoken tokenizer but a vocabulary of "
            f"{model.arch.vocab_size} tokens, without room for Llama 3's special tokens (ids "
            "128000-128255) that the tokenizer made for lm-eval uses: add a tokenizer.json "
            "beside the weights, or evaluate held-out rows only (no tasks)"
        )
    return None
