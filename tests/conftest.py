"""Shared fixtures: tiny random models of three architectures, loaded through `load_model`."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# pytest-xdist runs the suite in several processes: share the cores among them instead of each
# process spinning threads for every core. Set, not defaulted: xdist's workers inherit the
# controller's environment, and the subprocesses tests start (notebook kernels, CLI runs) read it;
# a kernel with 2 threads beside another busy process took 85-264 s for a notebook of 18 s.
_THREADS = max(
    1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)

from replacement import load_model  # noqa: E402
from tests.tiny_models import (  # noqa: E402
    make_gemma2,
    make_gpt2,
    make_llama,
    make_tokenizer,
    save_hf,
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE tokenizer with 300 tokens trained on a few lines of text."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """Folder of a random 2-layer GPT-2 (d_model 32)."""
    model = make_gpt2(len(tiny_tokenizer))
    return save_hf(model, tiny_tokenizer, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """Folder of a random 2-layer Llama (d_model 32)."""
    model = make_llama(len(tiny_tokenizer))
    return save_hf(model, tiny_tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory, tiny_tokenizer):
    """Folder of a random 2-layer Gemma-2 (d_model 32; post-norms, soft-capping)."""
    model = make_gemma2(len(tiny_tokenizer))
    return save_hf(model, tiny_tokenizer, tmp_path_factory.mktemp("gemma2"))


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir):
    """The tiny GPT-2 as a TransformerBridge (shared: do not modify its weights)."""
    return load_model(tiny_gpt2_dir)


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    """The tiny Llama as a TransformerBridge (shared: do not modify its weights)."""
    return load_model(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_gemma2(tiny_gemma2_dir):
    """The tiny Gemma-2 as a TransformerBridge (shared: do not modify its weights)."""
    return load_model(tiny_gemma2_dir)


@pytest.fixture(scope="session", params=["gpt2", "llama", "gemma2"])
def tiny_model(request):
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model."""
    return load_model("default")


# The modules that take longest run first, so that pytest-xdist (which hands whole modules to its
# processes in collection order, `--dist loadscope`) does not end on one long module with the
# other processes idle. Order within a module is kept; measured with `--durations`.
_LONGEST_FIRST = (
    "test_examples.py",
    "test_training.py",
    "test_claims.py",
    "test_zoo_recipe.py",
    "test_distributed.py",
    "test_output_folder.py",
    "test_attention_notebook.py",
    "test_distributed_cache.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the longest modules' tests first (a stable sort: other tests keep their order)."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
