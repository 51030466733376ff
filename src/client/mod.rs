//! gRPC client (filled by the client work).
