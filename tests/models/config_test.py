"""One source of defaults: every layer, model and the Task read `dact_tf.config`."""

import dataclasses
import json

import numpy as np
import pytest

import dact_tf
from dact_tf import config
from dact_tf import exits
from dact_tf.layers import DactHeads
from dact_tf.models import builder
from tests.testing import random_features
from tests.testing import tiny_backbone

RECIPE = config.ModelConfig()


def _settings(model):
    enc = model.encoder
    return {"tau": enc.initial_tau, "halting_bias": enc.halting_bias,
            "halting_confidence": enc.halting_confidence, "dropout": enc.dropout,
            "pooling": enc.pooling, "ponder": enc.ponder, "shared_heads": enc.shared_heads,
            "regression_tolerance": enc.regression_tolerance,
            "head_loss_weight": model.initial_head_loss_weight,
            "distill_weight": model.distill_weight}


def _expected(model_config, keys):
    return {k: getattr(model_config, k) for k in keys}


def test_a_model_left_to_its_defaults_is_the_recipe():
    model = dact_tf.DactClassifier(tiny_backbone(), num_classes=2)
    got = _settings(model)
    assert got == _expected(RECIPE, got)
    assert model.exit_criterion == exits.Dact(halting_rule=RECIPE.halting_rule)
    # The Task builds the same model.
    task = dact_tf.DactTextClassifier(tiny_backbone(), num_classes=2)
    assert _settings(task) == got
    # So do the layers on their own.
    heads = DactHeads(num_layers=3, num_outputs=2)
    assert (heads.halting_bias, heads.dropout, heads.halting_confidence) == (
        RECIPE.halting_bias, RECIPE.dropout, RECIPE.halting_confidence)


def test_the_paper_recipe_is_named_not_the_layers_defaults():
    paper = config.ModelConfig.paper()
    assert (paper.pooling, paper.tau, paper.head_loss_weight, paper.distill_weight,
            paper.halting_confidence, paper.full_depth_stage, paper.target_blocks) == (
        "cls", 1e-3, 0.0, 0.0, 0.0, False, 0.0)
    model_config, train_config = config.recipe("paper")
    assert model_config == paper and train_config.optimizer == "adam"
    assert config.recipe("default") == (config.ModelConfig(), config.TrainConfig())
    certified, certified_train = config.recipe("certified")
    assert certified == config.ModelConfig(halting_rule="certified", certified_risk="drop")
    assert certified_train == config.TrainConfig()
    with pytest.raises(ValueError, match="Unknown recipe 'fast'.*certified.*default.*paper"):
        config.recipe("fast")
    model = dact_tf.DactClassifier(tiny_backbone(), config=paper)
    got = _settings(model)
    assert got == _expected(paper, got)
    # An argument given wins over the config; None means "the config's".
    model = dact_tf.DactClassifier(tiny_backbone(), config=paper, tau=0.5, pooling=None)
    assert model.encoder.initial_tau == 0.5 and model.encoder.pooling == "cls"


def test_the_methods_take_only_what_they_use_of_the_recipe():
    for method in ("pabee", "deebert", "static"):
        model = dact_tf.DactClassifier(tiny_backbone(), method=method)
        assert model.distill_weight == 0.0 and model.encoder.halting_confidence == 0.0
    # Regression answers have no confidence for the halting units to read.
    model = dact_tf.DactClassifier(tiny_backbone(), task="regression", output_range=(0, 5))
    assert model.encoder.halting_confidence == 0.0
    assert model.distill_weight == RECIPE.distill_weight
    # A method's knobs come from the config; a knob of another method is refused.
    model = dact_tf.DactClassifier(
        tiny_backbone(), config=dataclasses.replace(RECIPE, method="pabee", patience=4))
    assert model.exit_criterion == exits.Pabee(patience=4)
    with pytest.raises(ValueError, match="`patience` is a setting of pabee"):
        dact_tf.DactClassifier(tiny_backbone(), method="dact", patience=3)
    with pytest.raises(ValueError, match="distill_weight"):
        dact_tf.DactClassifier(tiny_backbone(), method="pabee", distill_weight=1.0)
    with pytest.raises(TypeError, match="ModelConfig"):
        dact_tf.DactClassifier(tiny_backbone(), config={"tau": 0.1})


def test_the_builder_turns_a_config_into_that_model():
    model_config = dataclasses.replace(config.ModelConfig.paper(backbone="tiny"),
                                       freeze_backbone=True, num_layers=3)
    model, preprocessor = builder.build(model_config, num_classes=3, sequence_length=16)
    got = _settings(model)
    assert got == _expected(model_config, got)
    assert model.num_layers == 3 and model.num_classes == 3
    assert not model.backbone.trainable
    assert preprocessor.sequence_length == 16
    model, _ = builder.build(dataclasses.replace(RECIPE, backbone="tiny"), regression=True,
                             sequence_length=16)
    assert model.task == "regression" and model.output_range == config.REGRESSION_OUTPUT_RANGE


def test_a_config_saved_before_the_recipe_defaults_keeps_its_meaning():
    """A `.keras` config that lacks a setting meant the layers' old defaults (the paper's)."""
    model = dact_tf.DactClassifier(tiny_backbone(), config=config.ModelConfig.paper(),
                                   dropout=0.1)
    stored = json.loads(json.dumps(model.get_config()))
    for key in ("tau", "pooling", "halting_bias", "halting_confidence", "head_loss_weight",
                "distill_weight", "ponder"):
        del stored[key]
    again = dact_tf.DactClassifier.from_config(stored)
    assert _settings(again) == _settings(model)
    features = random_features(4, vocabulary_size=64)
    again.set_weights(model.get_weights())
    np.testing.assert_allclose(again(features, full_depth=True)["probabilities"],
                               model(features, full_depth=True)["probabilities"], atol=1e-6)
