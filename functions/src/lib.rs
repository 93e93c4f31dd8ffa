//! Handler-author SDK for API Gateway WebSocket handlers (grows with the handler SDK work).
