"""The names a config field chooses among: one list each, importable without JAX.

The registries that resolve these names key themselves by these lists
(``model.ACTIVATIONS`` and ``GATED_ACTIVATIONS``: the functions,
``precision.DTYPES``: the dtypes, ``sharding``: the mesh axes), and
transformer/fields.py's table takes its choices from them, so that checking a
config never imports the model.
"""

# config.model.activation. relu is Eq. (2); the others are deviations from the
# paper (model.py).
ACTIVATIONS = ("relu", "gelu", "elu", "silu")
# Gated linear units (Shazeer 2020): FFN(x) = (act(x W) * x W') W_2.
GATED_ACTIVATIONS = ("reglu", "geglu", "swiglu")
# config.model.norm_position: "post" is §3.1.
NORM_POSITIONS = ("post", "pre")
# config.model.positional_encoding: "sinusoidal" is §3.5, "learned" Table 3 row E.
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")
# config.model.attention_impl (precision.fused_attention_implementation).
ATTENTION_IMPLS = ("auto", "xla", "dot_product_attention")
# Compute and parameter dtypes (precision.DTYPES); config.model.dtype also
# takes "auto", config.decode.dtype "auto" and "model".
DTYPES = ("float32", "bfloat16", "float16")
DECODE_DTYPES = ("auto", "model", *DTYPES)
# config.model.matmul_output (precision.matmul_output_dtype): the dtype the
# activation-sized matmul products are written in.
MATMUL_OUTPUTS = ("auto", "float32", "compute")
# config.train.remat (train.py): what each layer's backward pass recomputes.
REMAT_POLICIES = ("none", "matmuls", "full")
# config.train.shard_optimizer (train.shards_optimizer): Adam's moments split
# over the "data" axis or not; "auto" splits them on a GPU.
SHARD_OPTIMIZER = ("auto", "data", "none")
# config.data.source (transformer/data/sources.py) and config.data.batching.
SOURCES = ("tfds", "text", "synthetic")
BATCHINGS = ("pack", "bucket")
# config.data.tokenizer_type: SentencePiece's model types.
TOKENIZER_TYPES = ("bpe", "unigram")
# evaluate.py --engine: this project's JAX search, or an exported CTranslate2 model.
ENGINES = ("jax", "ctranslate2")
# The axes of config.train.mesh_shape (transformer/sharding.py).
MESH_AXES = ("data", "fsdp", "tensor")
