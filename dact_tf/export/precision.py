"""Exports compute in float32, whatever precision the model trained in."""


def float32_model(model):
    """The model itself, or a float32 copy of a mixed-precision one.

    A model trained with `mixed_bfloat16` (or `mixed_float16`) keeps that
    policy in its layers, and its exported graph would compute in bfloat16:
    the TFLite converter has no bfloat16 kernels (`tf.AddV2` on `bf16`
    fails the conversion) and most servers gain nothing from it. Exports
    therefore run in float32: the same weights (mixed-precision variables
    are float32), every layer's policy set to `float32`. Answers can differ
    from the bfloat16 model's in the last digits; the early-exit guarantee
    holds within the export.

    Args:
        model: a built `DactClassifier` (or `DactTextClassifier`).

    Returns:
        `model` if no layer has a mixed-precision policy, else a new model
        built from its config with float32 policies and its weights.

    Example:
    ```python
    model = float32_model(keras.saving.load_model("run/model.keras"))
    ```
    """
    import keras

    def mixed(layer):
        policy = getattr(layer, "dtype_policy", None)
        return str(getattr(policy, "name", "")).startswith("mixed_")

    if not any(mixed(layer) for layer in model._flatten_layers(include_self=True)):
        return model

    def to_float32(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "DTypePolicy" and str(
                    obj.get("config", {}).get("name", "")).startswith("mixed_"):
                return "float32"
            return {k: to_float32(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [to_float32(v) for v in obj]
        return obj

    config = to_float32(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(model.get_weights())
    return copy
