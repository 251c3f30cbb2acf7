"""paresseg_jax.ablation's rows are data: a TOML file of label, run folder, config and overrides."""

import pytest

from paresseg_jax import ablation, config_defaults, config_files
from paresseg_jax.errors import PareSegError


def test_built_in_rows_are_the_papers_and_name_existing_configs():
    rows = ablation.read_rows()
    assert len(rows) == 8 and len({row.run for row in rows}) == 8
    assert {row.label for row in rows} <= set(ablation.paper_rows())  # each prints beside the paper's numbers
    for row in rows:
        config_files.resolve(row.config)


def test_a_row_file_of_ones_own(tmp_path):
    path = tmp_path / "rows.toml"
    path.write_text('[[row]]\nlabel = "mine"\nrun = "mine"\nconfig = "msf_resseg"\n'
                    'overrides = { "model.fusion" = "blocks:Gate", "model.phases" = ["pv", "art", "nc"] }\n')
    (row,) = ablation.read_rows(path)
    config = config_files.load(row.config)
    ablation.apply_overrides(config, row.overrides, row.label)
    assert config.model.fusion == "blocks:Gate" and config.model.phases == ("pv", "art", "nc")


@pytest.mark.parametrize("text, problem", [
    ('[[row]]\nlabel = "a"\nrun = "a"\n', "missing fields \\['config'\\]"),
    ('[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\nseed = 1\n', "unknown fields \\['seed'\\]"),
    ('[[row]]\nlabel = "a"\nrun = "a"\nconfig = "resseg"\n[[row]]\nlabel = "b"\nrun = "a"\nconfig = "unet"\n',
     "distinct run folders"),
    ('row = [', "cannot read"),
])
def test_bad_row_files_are_named(tmp_path, text, problem):
    path = tmp_path / "rows.toml"
    path.write_text(text)
    with pytest.raises(PareSegError, match=problem) as caught:
        ablation.read_rows(path)
    assert caught.value.path == str(path)


@pytest.mark.parametrize("overrides", [{"model.fusoin": "pa"}, {"modle.fusion": "pa"}, {"model.width": "wide"}])
def test_an_override_that_does_not_fit_is_refused_not_ignored(overrides):
    with pytest.raises(PareSegError, match="row 'r'"):
        ablation.apply_overrides(config_defaults.get_config(), overrides, "r")
