"""Encoder families: which family loads a spec, and a new family added in one module."""

import importlib.util
import textwrap

import keras_hub
import numpy as np
import pytest

import dact_tf
from dact_tf.models import backbones
from dact_tf.models import families
from dact_tf.models.families import base

NEW_FAMILY = textwrap.dedent(
    '''
    """A family of its own, in one module: nothing else in dact_tf is edited."""
    import keras
    import keras_hub

    from dact_tf.models import encoders, tiny
    from dact_tf.models.families import base


    @keras.saving.register_keras_serializable(package="families_test")
    class MineBackbone(keras_hub.models.DistilBertBackbone):
        pass


    class MineFamily(base.EncoderFamily):
        name = "mine"
        backbone_cls = MineBackbone
        tokenizer_cls = keras_hub.models.DistilBertTokenizer
        preprocessor_cls = keras_hub.models.DistilBertTextClassifierPreprocessor
        adapter = encoders.TokenAndPositionAdapter()
        tiny_spec = "tiny_mine"
        task_class_name = "DactMineTextClassifier"

        def tiny(self, seed, max_sequence_length, dropout):
            tokenizer = self.tokenizer(tiny.tiny_vocabulary())
            backbone = MineBackbone(vocabulary_size=tokenizer.vocabulary_size(), num_layers=3,
                                    num_heads=2, hidden_dim=16, intermediate_dim=32,
                                    max_sequence_length=max_sequence_length or 32)
            tiny.seed_weights(backbone, seed)
            return backbone, tokenizer


    base.register(MineFamily())
    ''')


def test_each_spec_is_loaded_by_its_family(tmp_path):
    assert families.for_spec("tiny").name == "bert"
    assert families.for_spec("minilm_l6").name == "bert"
    assert families.for_spec("bert_base_en_uncased").name == "bert"
    assert families.for_spec("tiny_distil_bert").name == "distil_bert"
    assert families.for_spec("distil_bert_base_en_uncased").name == "distil_bert"
    # keras-hub preset folders: by the backbone class their config.json names.
    backbone, tokenizer = backbones.load_backbone("tiny_distil_bert", max_sequence_length=16)
    backbone.save_to_preset(str(tmp_path / "distil"))
    tokenizer.save_to_preset(str(tmp_path / "distil"))
    assert families.for_spec(str(tmp_path / "distil")).name == "distil_bert"
    loaded, loaded_tokenizer = backbones.load_backbone(str(tmp_path / "distil"))
    assert isinstance(loaded, keras_hub.models.DistilBertBackbone)
    assert loaded_tokenizer.get_vocabulary() == tokenizer.get_vocabulary()
    bert, bert_tokenizer = backbones.load_backbone("tiny", max_sequence_length=16)
    bert.save_to_preset(str(tmp_path / "bert"))
    bert_tokenizer.save_to_preset(str(tmp_path / "bert"))
    assert families.for_spec(str(tmp_path / "bert")).name == "bert"
    assert families.of_backbone(bert).name == "bert"
    assert families.of_backbone(backbone).name == "distil_bert"
    # The preprocessor follows the tokenizer's family: no segment ids for DistilBERT.
    x = backbones.make_preprocessor(tokenizer, sequence_length=8)(["a fine film"])
    assert sorted(x) == ["padding_mask", "token_ids"]


def test_an_unknown_spec_names_what_each_family_loads():
    with pytest.raises(ValueError) as error:
        backbones.load_backbone("no_such_backbone")
    message = str(error.value)
    for name in ("bert:", "'minilm_l6'", "distil_bert: 'tiny_distil_bert'",
                 "electra: from Python only"):
        assert name in message
    with pytest.raises(ValueError, match="electra: from Python only"):
        backbones.load_backbone("electra_base_discriminator_en")  # Python-only family


def test_a_family_must_be_a_family_with_a_name_of_its_own():
    with pytest.raises(TypeError, match="EncoderFamily"):
        families.register(object())

    class Impostor(base.EncoderFamily):
        name = "bert"
        backbone_cls = keras_hub.models.BertBackbone

    with pytest.raises(ValueError, match="already registered"):
        families.register(Impostor())
    with pytest.raises(ValueError, match="Unknown encoder family"):
        families.named("nope")


def test_a_new_family_in_one_module_trains_saves_and_loads(tmp_path):
    path = tmp_path / "mine_family.py"
    path.write_text(NEW_FAMILY)
    spec = importlib.util.spec_from_file_location("mine_family", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    model = dact_tf.DactTextClassifier.from_preset("tiny_mine", num_classes=2,
                                                   sequence_length=16)
    assert type(model).__name__ == "DactMineTextClassifier"
    assert model.num_layers == 3 and model.input_keys == ("token_ids", "padding_mask")
    texts = ["a fine film", "a dull film", "great fun", "a boring mess"] * 4
    model.fit(x=texts, y=[1, 0, 1, 0] * 4, epochs=1, verbose=0)
    early = model.predict(texts[:4], verbose=0)
    x = model.preprocessor(texts[:4])
    # The halting guarantee holds for the new family: early answers are full depth's.
    np.testing.assert_array_equal(np.asarray(model(x)["predictions"]),
                                  np.asarray(model(x, full_depth=True)["predictions"]))

    model.save_to_preset(str(tmp_path / "saved"))
    again = dact_tf.DactTextClassifier.from_preset(str(tmp_path / "saved"))
    assert type(again).__name__ == "DactMineTextClassifier"
    np.testing.assert_allclose(again.predict(texts[:4], verbose=0)["probabilities"],
                               early["probabilities"], atol=1e-5)
