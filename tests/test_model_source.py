import json
import os
import subprocess
import sys

import pytest
from hf_cache import make_hf_cache

from llama_stack_provider_kfp.boundary.model_source import (
    ModelError,
    arch_from_hf_config,
    arch_from_meta_params,
    inspect_model_dir,
    resolve_model,
)

# params.json of the published Meta checkpoints, and the intermediate sizes their HF twins state.
META_PARAMS = {
    "Llama3.2-1B": ({"dim": 2048, "ffn_dim_multiplier": 1.5, "multiple_of": 256, "n_heads": 32,
                     "n_kv_heads": 8, "n_layers": 16, "norm_eps": 1e-05, "rope_theta": 500000.0,
                     "use_scaled_rope": True, "vocab_size": 128256}, 8192, True, 32.0),
    "Llama3.2-3B": ({"dim": 3072, "ffn_dim_multiplier": 1.0, "multiple_of": 256, "n_heads": 24,
                     "n_kv_heads": 8, "n_layers": 28, "norm_eps": 1e-05, "rope_theta": 500000.0,
                     "use_scaled_rope": True, "vocab_size": 128256}, 8192, True, 32.0),
    "Llama3.1-8B": ({"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
                     "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0,
                     "use_scaled_rope": True, "vocab_size": 128256}, 14336, False, 8.0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(META_PARAMS))
def test_meta_params_give_published_dimensions(name):
    params, intermediate, tied, factor = META_PARAMS[name]
    arch = arch_from_meta_params(params)
    assert arch.intermediate_dim == intermediate
    assert arch.tie_word_embeddings is tied and arch.rope_scale_factor == factor


def test_hf_config_both_rope_spellings():
    base = {"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
            "intermediate_size": 128, "tie_word_embeddings": True}  # fmt: skip
    old = {**base, "rope_theta": 1e4, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}}
    new = {**base, "rope_parameters": {"rope_type": "llama3", "factor": 32.0, "rope_theta": 1e4}}
    assert arch_from_hf_config(old) == arch_from_hf_config(new)
    plain = arch_from_hf_config({**base, "rope_theta": 1e4})
    assert plain.rope_scale_factor is None and plain.rope_base == 1e4
    with pytest.raises(ModelError, match="yarn"):
        arch_from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4}})


def test_layouts_detected(tiny_models):
    hf = inspect_model_dir("t", tiny_models / "hf")
    meta = inspect_model_dir("t", tiny_models / "meta")
    assert (hf.layout, meta.layout) == ("huggingface", "meta")
    assert hf.arch == meta.arch  # the same model in both layouts
    assert hf.tokenizer_file == "original/tokenizer.model"


def test_resolution_order_and_errors(tiny_models, tmp_path):
    # A descriptor is looked up under the model dirs.
    (tmp_path / "Llama3.2-1B-Instruct").symlink_to(tiny_models / "meta")
    spec = resolve_model("Llama3.2-1B-Instruct", None, [tmp_path])
    assert spec.layout == "meta"
    # checkpoint_dir wins over the name.
    assert resolve_model("Llama3.2-1B-Instruct", str(tiny_models / "hf"), [tmp_path]).layout == (
        "huggingface"
    )
    with pytest.raises(ModelError, match="not found"):
        resolve_model("Llama3.1-8B-Instruct", None, [tmp_path])
    bad = tmp_path / "two-shards"
    bad.mkdir()
    (bad / "params.json").write_text(json.dumps(META_PARAMS["Llama3.2-1B"][0]))
    for i in range(2):
        (bad / f"consolidated.0{i}.pth").write_bytes(b"")
    with pytest.raises(ModelError, match="2 model-parallel shards"):
        inspect_model_dir("x", bad)


def test_repo_id_resolves_from_the_local_hf_cache(tiny_models, tmp_path):
    env = {**os.environ, **make_hf_cache(tmp_path / "hf", "acme/tiny-llama", tiny_models / "meta")}
    code = (
        "from llama_stack_provider_kfp.boundary.model_source import resolve_model;"
        "m = resolve_model('acme/tiny-llama', None, []); print(m.layout, m.arch.num_layers)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["meta", "2"]
