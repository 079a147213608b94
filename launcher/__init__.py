"""The `invmesh` command: runs and supervises the services (`up`, `serve`), administers their
databases (`migrate`, `keys`, `users`) and generates code from the protos (`launcher.codegen`).
It imports the services; they and the shared runtime `mesh` never import it."""
