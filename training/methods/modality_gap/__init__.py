"""Paper A, "Mind the Modality Gap" (Zavras et al. 2024/2025): patching, then cross-modal alignment.

Stage 1 (``finetune``, ``patching``): fine-tune the CLIP image encoder through a frozen zero-shot head
(``zeroshot_head``) and interpolate its weights with the zero-shot ones. Stage 2 (``alignment``): distil the
frozen patched RGB encoder into Sentinel-2 and Sentinel-1 students (``students``). ``recipe.run_recipe`` runs
both from a YAML config; ``import_paper`` turns the paper's released checkpoints into bundles.
"""
