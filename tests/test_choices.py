"""Tests for transformer/choices.py: the registries are keyed by its names.

transformer/model.py and transformer/precision.py build their dicts (name ->
function, name -> dtype) from choices.py's lists, in their order; these tests
hold them to it, and export's CTranslate2 names to a subset.
"""

from transformer import choices


def test_the_model_registries_are_the_declared_names():
  from transformer import model as model_lib

  assert tuple(model_lib.ACTIVATIONS) == choices.ACTIVATIONS
  assert tuple(model_lib.GATED_ACTIVATIONS) == choices.GATED_ACTIVATIONS


def test_the_dtypes_are_the_declared_names():
  from transformer import precision

  assert tuple(precision.DTYPES) == choices.DTYPES
  assert choices.DECODE_DTYPES == ("auto", "model", *choices.DTYPES)


def test_the_mesh_axes_are_the_declared_names():
  from transformer import sharding

  assert sharding.MESH_AXES is choices.MESH_AXES


def test_ctranslate2_names_only_activations_the_model_has():
  from transformer import export

  assert set(export.ACTIVATIONS) <= {*choices.ACTIVATIONS, *choices.GATED_ACTIVATIONS}
