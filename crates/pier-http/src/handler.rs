//! The component handler: one request, one fresh instance.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pier_engine::ProxyApp;
use tokio::sync::oneshot;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::body::{GuestOutcome, ResponseBody, error_response};

/// Answers `req` with a fresh instance of `app`.
///
/// The guest runs in its own task so that it can keep streaming the body (or keep working) after
/// it has handed over the response head. If it fails before that, the client gets a 500; if it
/// fails after, the response body is aborted.
pub async fn handle(app: Arc<ProxyApp>, req: Request<Incoming>) -> Response<ResponseBody> {
    let mut store = match app.new_store() {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(component = app.name(), "cannot prepare an instance: {e:#}");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (sender, receiver) = oneshot::channel();
    let mut http = store.data_mut().http();
    let request = match http.new_incoming_request(Scheme::Http, req) {
        Ok(request) => request,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
    };
    let outparam = match http.new_response_outparam(sender) {
        Ok(outparam) => outparam,
        Err(e) => {
            tracing::error!(
                component = app.name(),
                "cannot create the response outparam: {e:#}"
            );
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };

    let outcome = Arc::new(GuestOutcome::default());
    let guest = {
        let app = app.clone();
        let outcome = outcome.clone();
        tokio::spawn(async move {
            let result = async {
                let proxy = app.pre().instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            }
            .await;
            if let Err(e) = &result {
                let report = pier_engine::describe_guest_error(e);
                tracing::error!(component = app.name(), %method, path, "guest failed: {report}");
            }
            // Publish the outcome before the store (and with it the body sender) is dropped.
            outcome.set(result.is_ok());
            drop(store);
            result.is_ok()
        })
    };

    match receiver.await {
        Ok(Ok(response)) => response.map(|body| ResponseBody::guest(body, outcome)),
        Ok(Err(code)) => {
            tracing::warn!(
                component = app.name(),
                "guest answered with an error: {code:?}"
            );
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the component answered with an error",
            )
        }
        // The outparam was dropped unused: the guest returned without answering, or failed.
        Err(_) => match guest.await {
            Ok(true) => {
                tracing::error!(
                    component = app.name(),
                    "guest returned without setting a response"
                );
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the component returned no response",
                )
            }
            Ok(false) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "the component failed"),
            Err(e) => {
                tracing::error!(component = app.name(), "guest task ended abnormally: {e}");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        },
    }
}
