//! WebSocket adapter of polybridge (in progress).
