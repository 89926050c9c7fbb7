"""PipelineManager: one loaded model, one lock, and `generate(request) -> result`.

The manager owns the device, the precision and the memory options, loads and switches models
(a failed load keeps the current model), and runs txt2img and img2img on one copy of the weights
(the img2img pipeline is made with `from_pipe`). Generation and switching are serialised by one
lock. Every run gets a fresh scheduler and CPU generators seeded per image, so a request gives
the same pixels as calling the diffusers pipeline directly with the same arguments. This module
knows nothing of Gradio; `stream()` serves any UI that wants step-by-step progress.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import gc
import random
import threading
import time

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from studio import attention as studio_attention
from studio import devices, forward, guidance, images, inpainting, loras, models, noise, prompts, runcard
from studio import schedulers, streams
from studio.config import Settings
from studio.errors import GenerationCancelled, StudioError
from studio.previews import PreviewDecoder
from studio.fields import MAX_SEED
from studio.loaded import LoadedModel
from studio.requests import GenerationRequest, GenerationResult, check_inputs, check_limits
from studio.trajectory import TrajectoryRecorder, schedule_sigmas


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    device: str
    dtype: str
    native_size: int
    memory: dict


class PipelineManager:
    # Every step keeps its resumable state and the CFG halves (studio.branching, studio.lens);
    # the benchmark turns this off to measure what keeping them costs.
    keep_steps_state = True
    concurrency = 1  # generations at once (the UI's queue); studio.scale's RayManager: one per replica

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.device = devices.choose_device(self.settings.device)
        self.dtype = devices.choose_dtype(self.settings.dtype, self.device)
        if self.settings.cpu_offload and self.device == "cpu":
            raise StudioError("cpu_offload needs an accelerator (cuda, xpu or mps); on the CPU "
                              "the model is already in main memory, so leave --cpu-offload off.")
        self._lock = threading.RLock()
        self._running_cancel: threading.Event | None = None  # the running job's Stop flag
        self._model: LoadedModel | None = None
        # --no-save (a Space's default) writes nothing to disk: the fitted preview maps stay in memory
        self.previews = PreviewDecoder(self.settings.tiny_vae, None if self.settings.no_save else self.settings.cache_dir)
        self._forward = forward.ForwardProcess()
        self.loras = loras.Library(self.settings.lora_dir, self.settings.trust_pickle)
        # One long-lived thread runs every streamed generation. A fresh thread per run starts a
        # fresh OpenMP team, and the benchmark measured such runs 1.9x slower on 2 CPU cores.
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="studio-generate")

    # ----- models -------------------------------------------------------------------------
    def load(self, name: str | None = None) -> ModelInfo:
        """Load `name` (default: the settings' model). If it fails, the current model stays."""
        name = name or self.settings.model
        source = models.resolve(name, trust_pickle=self.settings.trust_pickle)
        with self._lock:
            defaults = models.model_defaults(source)
            pipe = models.load_pipeline(source, self.dtype, self.settings.model_config)
            self._unload()  # free the old weights before the new ones go to the device
            self._model = self._place(source, pipe, defaults)
            self.previews.reset()
            return self.info

    def _place(self, source: models.ModelSource, pipe, defaults: dict) -> LoadedModel:
        """Apply precision, memory options and the device to a freshly loaded pipeline."""
        pipe.set_progress_bar_config(disable=True)
        devices.apply_memory_options(pipe, self.settings, self.device)
        unet = getattr(pipe, "unet", None)
        scale = getattr(pipe, "vae_scale_factor", 1)
        return LoadedModel(source=source, txt2img=pipe, scheduler_config=dict(pipe.scheduler.config),
                           family=models.family(pipe), hash=models.model_hash(source),
                           native_size=int(unet.config.sample_size) * scale if unet is not None else 64,
                           defaults=defaults)

    def _unload(self) -> None:
        self._model = None
        self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    @property
    def info(self) -> ModelInfo:
        m = self._require_model()
        s = self.settings
        memory = {"attention_slicing": s.attention_slicing, "vae_slicing": s.vae_slicing,
                  "vae_tiling": s.vae_tiling, "cpu_offload": s.cpu_offload}
        return ModelInfo(m.source.name, m.family, devices.describe(self.device),
                         devices.dtype_name(self.dtype), m.native_size, memory)

    @property
    def loaded(self) -> LoadedModel:
        return self._require_model()

    def _require_model(self) -> LoadedModel:
        if self._model is None:
            raise StudioError("No model is loaded yet; load one with --model or the model box.")
        return self._model

    # ----- generation ---------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running generation at its next step."""
        running = self._running_cancel
        if running is not None:
            running.set()

    def generate(self, request: GenerationRequest, on_step=None,
                 cancel: threading.Event | None = None, start=None) -> GenerationResult:
        """Run one request; `on_step(step, total, previews_or_None)` is called after each step.

        Setting `cancel` (or calling `cancel()`) stops it at its next step. `start` (a
        studio.branching.Start) carries on from a step of an earlier run: see `branch`."""
        request = check_inputs(request)
        cancel = cancel or threading.Event()
        with self._lock:
            self._running_cancel = cancel
            try:
                model = self._require_model()
                return self._run(model, request, on_step, cancel, start)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not isinstance(exc, torch.OutOfMemoryError) and "out of memory" not in str(exc).lower():
                    raise
                message = out_of_memory_message(request, model)
            finally:
                self._running_cancel = None
            # Out of memory. Release it only here, outside the except block: until that block
            # ends, the error's traceback holds the failed run's frames and their tensors.
            self._release_memory()  # only after a failure: a full gc costs ~0.1 s a run
            raise StudioError(message)

    def _run(self, model: LoadedModel, request: GenerationRequest, on_step,
             cancel: threading.Event, start=None) -> GenerationResult:
        started = time.perf_counter()
        warnings: list[str] = []
        # 1. Resolve what the request leaves open: size, seeds, pipeline and a fresh scheduler
        width, height = request.width or model.native_size, request.height or model.native_size
        base_seed = request.seed if request.seed >= 0 else random.randrange(MAX_SEED + 1)
        seeds = [(base_seed + i) % (MAX_SEED + 1) for i in range(request.num_images_per_prompt)]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if model.unconditional and request.is_img2img:
            raise StudioError(f"model={model.source.name!r} is unconditional (no prompt, no image "
                              "input): image to image needs a text-to-image model.")
        # A resumed run (img2img too) only denoises: the text-to-image loop, from its latents
        if (request.is_inpaint or model.inpainting_unet) and start is not None:
            raise StudioError("An inpainting run, or any run of an inpainting model, cannot be branched yet; "
                              "branch an image-to-image run of a text-to-image model instead.")
        if model.inpainting_unet or request.is_inpaint:
            pipe = model.inpaint
        else:
            pipe = model.img2img if request.is_img2img and start is None else model.runner
        pipe.scheduler = schedulers.make_scheduler(request.scheduler, model.scheduler_config, seeds)
        chart = copy.deepcopy(pipe.scheduler)  # the schedule chart's: a copy (DPM++ SDE's is slow to make)
        if start is not None:
            pipe.scheduler, generators = start.prepare(pipe.scheduler, generators)
        request = dataclasses.replace(request, width=width, height=height, seed=base_seed,
                                      **guidance.resolve(request, model.defaults))
        check_limits(request, model.native_size, self.settings.size_factor, self.settings.public)

        # 2. LoRAs, then the prompts: A1111's weights and long prompts in chunks (studio.weighting)
        picked = self.loras.resolve(loras.selection(request.loras, request.prompt))
        model.adapters.use(picked)
        kwargs = {} if model.unconditional else prompts.prompt_kwargs(
            pipe, request.prompt, request.negative_prompt, request.clip_skip)
        if loras.tags(request.negative_prompt):
            warnings.append("The negative prompt's <lora:...> tags were left out: a LoRA is picked in the prompt.")

        # 3. img2img input, upright RGB at the requested size
        if model.unconditional:
            pass
        elif request.is_inpaint:
            inpaint = inpainting.Inpainting.of(request, width, height)
            kwargs |= inpaint.pipeline_kwargs()
        elif model.inpainting_unet:
            kwargs |= inpainting.whole_picture_kwargs(request.image, width, height, request.strength)
        elif request.is_img2img and start is None:
            kwargs |= {"image": images.prepare(request.image, width, height), "strength": request.strength}
        else:
            kwargs |= {"width": width, "height": height}
        if start is None:
            latents, request = noise.variation(pipe, request, generators, width, height)
            kwargs |= latents
        else:
            kwargs["latents"] = start.latents

        # 4. The recorder behind callback_on_step_end: trajectory, previews, cancel, resumable state
        total = request.steps_to_run()
        recorder = TrajectoryRecorder(request.num_inference_steps,
                                      start_step=request.num_inference_steps - total,
                                      on_step=self.previews.step_reporter(model, request, total, on_step),
                                      should_stop=cancel.is_set, steps=start.steps if start is not None else (),
                                      generators=generators if self.keep_steps_state else None,
                                      attention=studio_attention.for_run(pipe, request, len(seeds), warnings))
        recorder.trajectory.schedule = schedule_sigmas(chart, request.num_inference_steps)
        recorder.attach(pipe.scheduler, getattr(pipe, "unet", None) if self.keep_steps_state else None)
        interval = guidance.for_run(pipe, request.guidance_min_sigma, request.guidance_scale,
                                    request.num_images_per_prompt, request.guidance_fade_sigma)
        if interval is not None:  # guidance only down to min_sigma (studio.guidance)
            interval.install()

        # 5. Denoise and decode
        denoise_started = time.perf_counter()
        try:
            output = pipe(num_inference_steps=request.num_inference_steps,
                          guidance_scale=request.guidance_scale,
                          num_images_per_prompt=request.num_images_per_prompt, generator=generators,
                          output_type="np", callback_on_step_end=recorder.callback, **kwargs)
        finally:
            recorder.close()
            if interval is not None:
                interval.remove()
        if cancel.is_set():
            done = len(recorder.trajectory.steps)
            raise GenerationCancelled(f"Stopped at step {done} of {total}.")

        # 6. Never a silent black image: NaN means the precision failed
        pixels = output.images  # (batch, h, w, 3) in [0, 1]
        if not np.isfinite(pixels).all():
            raise StudioError(f"The model produced NaN pixels in {devices.dtype_name(self.dtype)}; "
                              "try --dtype float32 (or bfloat16), or a VAE that works in float16.")
        if request.is_inpaint:  # outside the mask, the input's own pixels
            pixels = inpaint.paste_back(pixels)
        finished = time.perf_counter()
        ran = len(recorder.trajectory.steps) - len(start.steps if start is not None else ())
        if recorder.trajectory.final is not None:  # fast previews learn the colours it drew
            self.previews.learn(model, recorder.trajectory.final, pixels)
        return GenerationResult(
            images=DiffusionPipeline.numpy_to_pil(pixels), seeds=seeds, request=request,
            model=model.source.name, model_hash=model.hash, device=self.device,
            dtype=devices.dtype_name(self.dtype), warnings=warnings, trajectory=recorder.trajectory,
            scheduler_name=schedulers.name_of(pipe.scheduler), lineage=start.lineage if start is not None else None,
            card=runcard.of(pipe, self.device, devices.dtype_name(self.dtype), picked),
            timings={"total": finished - started, "denoise_and_decode": finished - denoise_started,
                     "steps": ran, "seconds_per_step": (finished - denoise_started) / max(ran, 1)})

    def unload_loras(self) -> None:
        """Take every LoRA adapter off the loaded model (a run that names none does this too)."""
        with self._lock:
            self._require_model().adapters.unload()

    def forward_process(self, image, **options) -> forward.ForwardResult:
        """`image` noised the way a run does it (studio.forward.ForwardProcess), under the lock."""
        with self._lock:
            return self._forward(self._require_model(), self.previews, image, **options)

    def decode(self, latents: torch.Tensor, kind: str) -> list[Image.Image]:
        """Pictures of (batch, c, h, w) latents as the UNet sees them (a trajectory's x_t or x0),
        by the `kind` of decoder (fast, tiny or full), under the lock: never mid-switch."""
        with self._lock:
            return self.previews.decode(self._require_model(), latents, kind)

    def check_same_model(self, result: GenerationResult) -> None:
        """StudioError unless `result` (a saved run opened again) was made by the loaded model:
        its latents decode only with that model's own VAE."""
        model = self._require_model()
        if result.model_hash != model.hash:
            raise StudioError(f"This run was made with model {result.model!r} (hash {result.model_hash}), and the "
                              f"loaded model is {model.source.name!r} (hash {model.hash}). Load the run's model "
                              "first: its latents decode only with that model's own VAE.")

    def preview_note(self, request: GenerationRequest) -> str | None:
        """What a run shows instead of a fast preview while the model's map is first fitted."""
        model = self._model
        if request.preview != "fast" or model is None or self.previews.fast_ready(model):
            return None
        return "preparing the fast preview for this model (once; later runs show it from the first step)"

    def stream(self, request: GenerationRequest, cancel: threading.Event | None = None):
        """Run in a worker thread; yield a streams.Step for each step, then streams.Done.
        Closing the generator early (a UI's Stop, a dropped client) cancels the run."""
        return streams.stream(self, request, cancel)


def out_of_memory_message(request: GenerationRequest, model: LoadedModel) -> str:
    width, height = request.width or model.native_size, request.height or model.native_size
    return (f"Out of memory at {width}x{height} with "
            f"num_images_per_prompt={request.num_images_per_prompt}; memory was released. Try a "
            "smaller size or batch, or --attention-slicing max / --vae-tiling / --cpu-offload.")
