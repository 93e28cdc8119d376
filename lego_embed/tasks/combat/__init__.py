"""The bundled model's combat task: state validation, prompt, expert policy, persona barks,
evaluation, and the runtime requests it builds (one user of the task-neutral API)."""
