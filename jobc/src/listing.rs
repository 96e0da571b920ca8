//! `jobc list`: every page of the List call, from one server or from every context's
//! server at once.
//!
//! Pages are printed as they come for `-o json` (the whole list's argv may be larger than
//! jobc's memory); the table needs its widths, so it is printed at the end. Across
//! contexts the servers are asked concurrently, each with its own connection and
//! settings, and the one that fails is named on stderr while the others are printed.

use proto::v1 as pb;
use proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

use crate::args::{ConnArgs, Format, ListState};
use crate::contexts::Contexts;
use crate::errors::{self, Failure, EXIT_REQUEST};
use crate::output::{self, JsonArray, ListTable};

/// The first page's request.
pub fn request(state: Option<ListState>, owner: Option<String>) -> pb::ListRequest {
    pb::ListRequest {
        // The server lowers it to its maximum, and ends a page early before it grows
        // large: few round trips, small messages.
        page_size: 1000,
        page_token: String::new(),
        state: match state {
            None => pb::ListStateFilter::Unspecified,
            Some(ListState::Running) => pb::ListStateFilter::Running,
            Some(ListState::Ended) => pb::ListStateFilter::Ended,
        } as i32,
        owner: owner.unwrap_or_default(),
    }
}

/// Calls List page after page, handing each page's jobs to `each`.
pub async fn pages(
    client: &mut JobServiceClient<Channel>,
    server: &str,
    mut request: pb::ListRequest,
    mut each: impl FnMut(Vec<pb::JobStatus>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    loop {
        let page = client
            .list(request.clone())
            .await
            .map_err(|s| errors::from_status(&s, server))?
            .into_inner();
        each(page.jobs)?;
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        if page.next_page_token == request.page_token {
            return Err(Failure::new(
                EXIT_REQUEST,
                "the server sent the same page of the list twice",
            ));
        }
        request.page_token = page.next_page_token;
    }
}

/// One server's list, printed.
pub async fn list(
    client: &mut JobServiceClient<Channel>,
    server: &str,
    request: pb::ListRequest,
    format: Format,
) -> Result<(), Failure> {
    let mut table = ListTable::default();
    let mut json = JsonArray::default();
    pages(client, server, request, |jobs| match format {
        Format::Text => {
            table.add(&jobs);
            Ok(())
        }
        Format::Json => output::print(&json.elements(&jobs)),
    })
    .await?;
    match format {
        Format::Text => output::print(&table.render()),
        Format::Json => output::print(json.end()),
    }
}

/// Every context's list, asked at once. Prints what came, in the order of the contexts'
/// names; each context that failed is named on stderr, and the first failure's exit code
/// is jobc's.
pub async fn list_all(
    conn: &ConnArgs,
    contexts: &Contexts,
    request: pb::ListRequest,
    format: Format,
) -> Result<(), Failure> {
    let all = contexts
        .all()
        .map_err(|e| Failure::new(errors::EXIT_USAGE, e))?;
    if all.is_empty() {
        return Err(Failure::new(
            errors::EXIT_USAGE,
            format!("{} has no contexts", contexts.path().display()),
        ));
    }
    // Each context with its own settings: only the time limit applies to all of them.
    let flags = ConnArgs {
        context: None,
        server: None,
        ca: None,
        cert: None,
        key: None,
        connect_timeout: conn.connect_timeout,
    };
    let asks: Vec<_> = all
        .into_iter()
        .map(|(name, context)| {
            let target = flags.target_in(&context);
            let request = request.clone();
            let task = tokio::spawn(async move {
                let target = target.map_err(|e| Failure::new(errors::EXIT_USAGE, e))?;
                let mut client = crate::client::connect(&target).await?;
                let mut jobs = Vec::new();
                let listed = pages(&mut client, &target.server, request, |page| {
                    jobs.extend(page);
                    Ok(())
                })
                .await;
                match listed {
                    Err(f) if f.unexplained => match crate::client::diagnose(&target).await {
                        Some(reason) => Err(Failure::new(f.exit_code, reason.to_string())),
                        None => Err(f),
                    },
                    other => other.map(|()| jobs),
                }
            });
            (name, task)
        })
        .collect();
    let mut table = ListTable::with_contexts();
    let mut json = JsonArray::default();
    let mut first_failure = None;
    for (name, task) in asks {
        let listed = task
            .await
            .unwrap_or_else(|e| Err(Failure::new(EXIT_REQUEST, format!("the list failed: {e}"))));
        match listed {
            Ok(jobs) => match format {
                Format::Text => table.add_in(&name, &jobs),
                Format::Json => output::print(&json.elements_in(Some(&name), &jobs))?,
            },
            Err(failure) => {
                crate::follow::note(&format!("context {name}: {}", failure.message));
                first_failure.get_or_insert(failure.exit_code);
            }
        }
    }
    match format {
        Format::Text => output::print(&table.render())?,
        Format::Json => output::print(json.end())?,
    }
    match first_failure {
        Some(code) => Err(Failure::new(code, "")),
        None => Ok(()),
    }
}
