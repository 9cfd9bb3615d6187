"""Text-to-LoRA (Charakorn et al., ICML 2025, arXiv 2506.06105) as a harness strategy, in the layout of
`baselines.dnd`: `model` (the hypernetwork, L/M/S), `config` (presets and settings), `descriptions` (task
descriptions, their controls and encoder), `hypernet` (meta_train by reconstruction or SFT, generation) and
`strategy` (`t2l`). It learns from DnD's library (`baselines.dnd.library`), so both methods share one."""
