"""The shared runtime of the invmesh services: configuration, the gRPC server bootstrap,
interceptors (request ids, logging, errors, token checks), database sessions and clients."""
