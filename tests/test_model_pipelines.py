"""`nexus_gen.models.pipelines`: the one loader of diffusers pipelines (editors, generators)."""
import pytest
import torch


def test_torch_dtype_by_name():
    from nexus_gen.models.pipelines import torch_dtype

    assert torch_dtype("float16") is torch.float16
    assert torch_dtype("bfloat16") is torch.bfloat16
    for bad in ("float33", "nn", "", None):  # `nn` is a torch attribute but not a dtype
        with pytest.raises(ValueError, match=r"is not a torch dtype \(use float32, float16, bfloat16\)"):
            torch_dtype(bad)


def test_load_pipeline_class_dtype_and_progress_bar():
    import diffusers

    from nexus_gen.models.pipelines import load_pipeline
    from nexus_gen.models.tiny import tiny_ip2p_dir

    pipe = load_pipeline(tiny_ip2p_dir(), "StableDiffusionInstructPix2PixPipeline", dtype="float16")
    assert type(pipe) is diffusers.StableDiffusionInstructPix2PixPipeline
    assert next(pipe.unet.parameters()).dtype == torch.float16
    assert pipe._progress_bar_config == {"disable": True}


def test_load_pipeline_errors_name_the_pipeline(tmp_path):
    from nexus_gen.models.pipelines import load_pipeline

    with pytest.raises(ValueError, match=f"cannot load InstructPix2Pix pipeline '{tmp_path}': not a pipeline folder"):
        load_pipeline(tmp_path, "StableDiffusionInstructPix2PixPipeline", what="InstructPix2Pix pipeline")
    with pytest.raises(ValueError, match="dtype 'half-ish' is not a torch dtype"):
        load_pipeline(tmp_path, dtype="half-ish")  # the dtype is checked before anything loads


def test_sampling_kwargs_leave_unset_settings_to_the_pipeline():
    from nexus_gen.models.pipelines import sampling_kwargs

    assert sampling_kwargs() == {}
    assert sampling_kwargs(3) == {"num_inference_steps": 3}
    got = sampling_kwargs(2, 7)
    assert got == {"num_inference_steps": 2, "guidance_scale": 7.0} and type(got["guidance_scale"]) is float
