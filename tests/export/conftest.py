"""Shared fixtures of the export tests: tiny models, exports, helpers.

The exports are session-scoped: each costs seconds of tracing and saving,
and every test only reads them.
"""

import json
import os
import subprocess
import sys

import keras_hub
import numpy as np
import pytest

from dact_tf.config import ModelConfig
from dact_tf.export import export_saved_model
from dact_tf.models import DactClassifier
from tests.testing import random_features
from tests.testing import tiny_backbone

NUM_LAYERS = 4
VOCAB_SIZE = 64
MAX_LEN = 16
LABELS = ["negative", "neutral", "positive"]
WORDS = ["the", "film", "good", "bad", "fun", "dull", "plot"]


def small_vocabulary():
    """64 word pieces: specials, letters, `##` letters, a few words.

    Any lowercase ASCII word tokenizes (falling back to letters); other
    characters become `[UNK]`.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(letters) + ["##" + c for c in letters] + WORDS
    assert len(vocab) == VOCAB_SIZE == len(set(vocab))
    return vocab


def small_tokenizer():
    return keras_hub.models.BertTokenizer(
        vocabulary=small_vocabulary(), lowercase=True
    )


def make_model(task="classification", seed=0, pooling="cls", **kwargs):
    """A random tiny DactClassifier whose heads exit at varied blocks.

    `kwargs` go to `DactClassifier` (e.g. `method="pabee"`). The heads are
    the paper's (`ModelConfig.paper()`: no confidence input) unless `config`
    is given; the CLI's export tests cover the default recipe's.
    """
    kwargs.setdefault("config", ModelConfig.paper())
    backbone = tiny_backbone(
        num_layers=NUM_LAYERS, vocabulary_size=VOCAB_SIZE, max_len=MAX_LEN, seed=seed
    )
    if task == "regression":
        return DactClassifier(
            backbone,
            task="regression",
            output_range=(0.0, 5.0),
            halting_bias=-2.0,
            dropout=0.0,
            pooling=pooling,
            **kwargs,
        )
    return DactClassifier(
        backbone,
        num_classes=len(LABELS),
        label_names=LABELS,
        halting_bias=-2.0,
        dropout=0.0,
        pooling=pooling,
        **kwargs,
    )


def int32_features(num, seed=0, seq_len=12):
    return {
        k: v.astype("int32")
        for k, v in random_features(
            num, seq_len=seq_len, vocabulary_size=VOCAB_SIZE, seed=seed
        ).items()
    }


def random_sentences(num, seed=0, max_words=9):
    """Lowercase sentences mixing vocabulary words and unknown words."""
    rng = np.random.default_rng(seed)
    pool = WORDS + ["movie", "boring", "great", "a", "x", "zebra", "!", "ok"]
    return [
        " ".join(rng.choice(pool, size=rng.integers(1, max_words + 1)))
        for _ in range(num)
    ]


def run_fresh_python(script, *args, timeout=240):
    """Runs `script` in a new interpreter that cannot import dact_tf.

    The working directory is the script's folder (not the repository) and
    PYTHONPATH is cleared, so only installed packages are importable.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, os.path.basename(script), *map(str, args)],
        cwd=os.path.dirname(script),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def classifier():
    return make_model()


@pytest.fixture(scope="session")
def features():
    """200 examples: the early-exit loop sees mixed batches."""
    return int32_features(200, seed=3)


@pytest.fixture(scope="session")
def plain_export(classifier, tmp_path_factory):
    """A token-id-only export (loads with `tensorflow` alone)."""
    base = tmp_path_factory.mktemp("plain")
    return export_saved_model(classifier, str(base))


@pytest.fixture(scope="session")
def text_export(classifier, tmp_path_factory):
    """An export with `serve_text` and `serve_text_pair` (needs TF Text)."""
    base = tmp_path_factory.mktemp("text")
    return export_saved_model(
        classifier,
        str(base),
        tokenizer=small_tokenizer(),
        text_pair=True,
    )
