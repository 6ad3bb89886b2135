//! `GET /`: the status page, one self-contained HTML file built into the binary (no
//! external assets), which polls `GET /status` (JSON) every second.

use axum::extract::State;
use axum::response::Html;
use axum::Json;

use super::Shared;
use crate::observe::status::Status;

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("page.html");

pub async fn index() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn status(State(s): State<Shared>) -> Json<Status> {
    Json(crate::observe::status::status(&s.state, &s.observer))
}
