"""TFLite (LiteRT) export of a DACT SavedModel, builtin ops only.

What was measured on this stack (TF 2.21, ai-edge-litert 2.3) and shapes
this module:

- `tf.lite.TFLiteConverter.from_saved_model` converts the early-exit loop
  (`tf.while_loop` with a data-dependent trip count, a `tf.cond` tree picking
  the block, gathers/scatters compacting the batch) to builtin `WHILE`/`IF`
  ops. No Flex op is needed, and none would run: the Flex delegate is in
  neither `tf.lite` nor ai-edge-litert 2.3.
- It freezes the weights only if the SavedModel tracks raw `tf.Variable`s
  (what `export_saved_model` does). For a SavedModel that tracks the Keras 3
  model instead, it silently keeps `VAR_HANDLE`/`READ_VARIABLE` ops without
  values: the file then computes garbage or fails at run time. This module
  refuses such a result.
- `tf.debugging` asserts (the model's input checks) are not TFLite builtins;
  the converter drops them without a word. The `.tflite` model therefore
  does not validate its inputs: the app must (see `export_tflite`).
- The text signatures do not convert with builtin ops: tokenization needs
  `FastWordpieceTokenizeWithOffsets` (custom) and `RegexSplitWithOffsets`,
  `RaggedGather`, `RaggedRange`, ... (Flex). Apps tokenize themselves with
  the export's `assets.extra/vocab.txt`.
- `from_saved_model` converts only `serving_default` if the saved object has
  an attribute named `serve` (it takes it for a Keras `model.export()`
  artifact); `export_saved_model` avoids that name.
"""

import collections
import os
import re
import shutil
import tempfile
import warnings

import tensorflow as tf

from dact_tf.utils import files
from dact_tf.utils import quiet

from dact_tf.export import saved_model as saved_model_lib
from dact_tf.export.precision import float32_model

QUANTIZE_MODES = ("none", "dynamic", "float16")
TFLITE_SIGNATURES = (saved_model_lib.SERVING_DEFAULT, saved_model_lib.FULL_DEPTH,
                     saved_model_lib.SERVE_BUDGET, saved_model_lib.SERVE_ONE)

_VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")
_MAX_MESSAGE = 3000


def export_tflite(
    source,
    path,
    quantize="none",
    signatures=TFLITE_SIGNATURES,
):
    """Converts a DACT SavedModel (or model) to a builtin-ops-only `.tflite`.

    Converts the token-id signatures with
    `tf.lite.TFLiteConverter.from_saved_model`, builtin ops only: by default
    `serving_default` (early exit), `full_depth`, `serve_budget` (the
    token-id inputs plus int32 `max_layers` `[batch]`, a per-row cap; adds
    the bool output `exact`) and `serve_one` (one row, `[1, seq]`: the
    blocks as a chain of `IF`s, no `WHILE` and no compaction; the fastest
    way to answer one request at a time, same answers as
    `serving_default`); the weights are stored once. If they do not
    convert together, `serving_default` alone is converted and a warning
    given. The result is checked before it is written:

    - no Flex (`SELECT_TF_OPS`) or other custom op (they would not run in
      ai-edge-litert): `ValueError` naming them;
    - every weight frozen into the file (no resource-variable ops);
    - the early-exit `WHILE` op is there (the exit really skips blocks).

    Input checks: TFLite has no `Assert` builtin and the converter drops the
    SavedModel's asserts, so the `.tflite` model does NOT validate its
    inputs. Callers must ensure `0 <= token_ids < vocabulary_size`,
    `0 <= segment_ids < num_segments` (2 for BERT), `1 <= seq <=
    max_sequence_length`, a non-empty batch and equal shapes of the three
    inputs (the values are in the SavedModel's
    `assets.extra/dact_tf_metadata.json`).
    What happens otherwise (measured, ai-edge-litert 2.3 on CPU): token or
    segment ids too large, too-long sequences and mismatched shapes make the
    call fail with a RuntimeError (GATHER / SLICE out of bounds, shapes not
    broadcastable), an empty batch with a ValueError; but negative token or
    segment ids silently wrap around (`-1` reads the last embedding row) and
    give an answer.

    Inputs are int32 `token_ids`, `padding_mask` (1 real, 0 padding) and
    `segment_ids`, `[batch, seq]` with both dimensions dynamic: LiteRT's
    signature runner resizes them per call.

    Args:
        source: a SavedModel folder written by `export_saved_model` (a
            version folder), or a `DactClassifier` (exported to a temporary
            SavedModel first).
        path: str, the `.tflite` file to write (written to a temporary file
            and renamed into place).
        quantize: `"none"` (float32), `"dynamic"` (dynamic-range int8
            weights, about 4x smaller) or `"float16"` (float16 weights, about
            2x smaller). Full-integer int8 is not offered (it was
            reported to crash the converter on the `WHILE` loop).
        signatures: the SavedModel signatures to convert, in order; the first
            is required, later ones are dropped (with a warning) if they do
            not convert.

    Returns:
        str, `path`.

    Raises:
        ValueError: bad arguments; the conversion needs non-builtin ops
            (named in the message); the result holds custom/Flex ops,
            unfrozen variables or no `WHILE` op.

    Example:
    ```python
    saved = export_saved_model(model, "/tmp/sst2")
    export_tflite(saved, "/tmp/sst2.tflite", quantize="dynamic")

    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path="/tmp/sst2.tflite")
    # Two signatures: name the one to run.
    runner = interpreter.get_signature_runner("serving_default")
    out = runner(token_ids=ids, padding_mask=mask, segment_ids=segments)
    out["predictions"], out["layers_executed"]
    ```
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZE_MODES}, got {quantize!r}."
        )
    signatures = tuple(signatures)
    if not signatures:
        raise ValueError("`signatures` must name at least one signature.")
    path = os.fspath(path)
    tmp_saved_model = None
    try:
        if isinstance(source, (str, os.PathLike)):
            saved_model_dir = os.fspath(source)
        else:
            tmp_saved_model = tempfile.mkdtemp(prefix="dact_tflite_")
            # A model trained under mixed precision converts as a float32 copy: the
            # converter has no bfloat16 builtins (as `export_saved_model` does).
            module, sigs = saved_model_lib.build_serving_module(float32_model(source))
            saved_model_dir = os.path.join(tmp_saved_model, "1")
            tf.saved_model.save(module, saved_model_dir, signatures=sigs)
        content = _convert_first_that_works(saved_model_dir, signatures, quantize)
    finally:
        if tmp_saved_model is not None:
            shutil.rmtree(tmp_saved_model, ignore_errors=True)
    check_tflite_model(content)
    _write_atomically(path, content)
    return path


def convert_saved_model(saved_model_dir, signatures=TFLITE_SIGNATURES, quantize="none"):
    """Converts SavedModel signatures to TFLite bytes, builtin ops only.

    The conversion step of `export_tflite`, without its fallback and checks.

    Args:
        saved_model_dir: str, a SavedModel folder.
        signatures: sequence of signature keys.
        quantize: one of `QUANTIZE_MODES`.

    Returns:
        bytes, the flatbuffer.

    Raises:
        ValueError: the conversion failed; the message names the TensorFlow
            ops that have no TFLite builtin, where the converter says.

    Example:
    ```python
    content = convert_saved_model("/models/sst2/1", ["serving_default"])
    ```
    """
    _import_tensorflow_text()  # Loading text signatures needs its ops.
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=list(signatures)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    try:
        # The converter logs from C++ while holding the GIL: never into the
        # command line's stderr filter pipe (it could fill and hang).
        with quiet.native_output_to_file():
            return converter.convert()
    except Exception as e:  # The converter's ConverterError is private.
        message = str(e)
        ops = _ops_in_converter_error(message)
        summary = [
            line
            for line in message.splitlines()
            if line.startswith(("TF Select ops", "Flex ops", "Custom ops"))
        ]
        raise ValueError(
            f"TFLite conversion of {list(signatures)} with builtin ops only "
            f"failed{'; ops without a builtin: ' + ', '.join(ops) if ops else ''}"
            f". {' '.join(summary)}\nConverter message (start):\n"
            f"{message[:_MAX_MESSAGE]}"
        ) from e


def tflite_ops(model):
    """Counts the operators of a TFLite model, all subgraphs included.

    Args:
        model: bytes (the flatbuffer) or str (a `.tflite` path).

    Returns:
        A `collections.Counter` from op name (builtin names such as
        `"WHILE"`, `"FULLY_CONNECTED"`; custom ops by their custom code, e.g.
        `"FlexAssert"`) to the number of uses.

    Example:
    ```python
    ops = tflite_ops("/tmp/sst2.tflite")
    ops["WHILE"]  # 2: serving_default and serve_budget
    ```
    """
    schema = _schema()
    buf = _read(model)
    fb = schema.Model.GetRootAs(buf, 0)
    names = _builtin_names()
    codes = []
    for i in range(fb.OperatorCodesLength()):
        opcode = fb.OperatorCodes(i)
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            custom = opcode.CustomCode()
            codes.append(custom.decode() if custom else "CUSTOM")
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    counts = collections.Counter()
    for s in range(fb.SubgraphsLength()):
        subgraph = fb.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            counts[codes[subgraph.Operators(o).OpcodeIndex()]] += 1
    return counts


def tflite_signatures(model):
    """The signature keys of a TFLite model.

    Args:
        model: bytes or str path.

    Returns:
        A list of str, in file order.

    Example:
    ```python
    tflite_signatures("/tmp/sst2.tflite")
    # ["full_depth", "serve_budget", "serve_one", "serving_default"]
    ```
    """
    fb = _schema().Model.GetRootAs(_read(model), 0)
    return [
        fb.SignatureDefs(i).SignatureKey().decode()
        for i in range(fb.SignatureDefsLength())
    ]


def check_tflite_model(model):
    """Checks a converted DACT model: builtin ops only, frozen, has `WHILE`.

    Args:
        model: bytes or str path.

    Returns:
        The op counts (`tflite_ops`).

    Raises:
        ValueError: custom or Flex ops (named), resource-variable ops (the
            weights were not frozen into the file), or no `WHILE` op (the
            early-exit loop is gone).

    Example:
    ```python
    check_tflite_model("/tmp/sst2.tflite")["WHILE"]  # 2
    ```
    """
    ops = tflite_ops(model)
    builtin = set(_builtin_names().values())
    custom = sorted(op for op in ops if op not in builtin)
    if custom:
        flex = [op for op in custom if op.startswith("Flex")]
        raise ValueError(
            f"The TFLite model uses non-builtin ops {custom}"
            + (f" (Flex/SELECT_TF_OPS: {flex})" if flex else "")
            + ": they do not run in ai-edge-litert (no Flex delegate). "
            "Convert with builtin ops only."
        )
    variables = sorted(op for op in _VARIABLE_OPS if ops[op])
    if variables:
        raise ValueError(
            f"The TFLite model holds resource-variable ops {variables}: its "
            "weights were not frozen into the file, so it would compute "
            "garbage. Export the SavedModel with "
            "dact_tf.export.export_saved_model (it tracks raw tf.Variables "
            "rather than the Keras model)."
        )
    if not ops["WHILE"]:
        raise ValueError(
            "The TFLite model has no WHILE op: the early-exit loop is "
            "missing (was a full-depth-only signature converted?)."
        )
    return ops


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _convert_first_that_works(saved_model_dir, signatures, quantize):
    try:
        return convert_saved_model(saved_model_dir, signatures, quantize)
    except ValueError as e:
        if len(signatures) == 1:
            raise
        warnings.warn(
            f"TFLite conversion of {list(signatures)} failed "
            f"({str(e).splitlines()[0]}); converting {signatures[0]!r} alone.",
            stacklevel=2,
        )
        return convert_saved_model(saved_model_dir, signatures[:1], quantize)


def _ops_in_converter_error(message):
    """The ops the converter names as unsupported, from its summary lines."""
    found = set()
    for line in message.splitlines():
        head, _, tail = line.partition(":")
        if head.strip() in ("TF Select ops", "Flex ops", "Custom ops"):
            found.update(op.strip() for op in tail.split(",") if op.strip())
    if not found:
        found.update(re.findall(r"'tf\.(\w+)' op is neither", message))
    return sorted(found)


def _import_tensorflow_text():
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:  # pragma: no cover - only text signatures need it.
        pass


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _builtin_names():
    op = _schema().BuiltinOperator
    return {
        value: name
        for name, value in vars(op).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def _read(model):
    if isinstance(model, (bytes, bytearray)):
        return bytearray(model)
    with open(model, "rb") as f:
        return bytearray(f.read())


def _write_atomically(path, content):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(content)

    files.atomic_write(path, write)
