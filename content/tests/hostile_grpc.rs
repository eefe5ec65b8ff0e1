//! Hostile requests straight at the gRPC services (no client-side validation in the way):
//! each gets a clear status code, nothing is written, and the server keeps serving.

mod common;

use strata_content::{Labels, Scope, SharingPolicy};
use strata_proto::containerd::services::content::v1 as pb;
use strata_proto::containerd::services::content::v1::content_client::ContentClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

fn with_ns<T>(msg: T, ns: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

/// Opens a Write stream, sends `msgs`, and returns the first error status (or None).
async fn write_session(
    c: &mut ContentClient<tonic::transport::Channel>,
    msgs: Vec<pb::WriteContentRequest>,
) -> Option<tonic::Status> {
    let (tx, rx) = mpsc::channel(msgs.len().max(1));
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut s = match c.write(with_ns(ReceiverStream::new(rx), "default")).await {
        Ok(s) => s.into_inner(),
        Err(e) => return Some(e),
    };
    loop {
        match s.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn stat(r: &str) -> pb::WriteContentRequest {
    pb::WriteContentRequest {
        action: pb::WriteAction::Stat as i32,
        r#ref: r.into(),
        ..Default::default()
    }
}

fn write(offset: i64, data: &[u8]) -> pb::WriteContentRequest {
    pb::WriteContentRequest {
        action: pb::WriteAction::Write as i32,
        offset,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

#[test]
fn hostile_requests_get_clear_errors() {
    let h = common::local(SharingPolicy::Shared);
    let sock = h.dir.path().join("hostile.sock");
    let (rt, _store) = common::serve(h.local.clone(), &sock);
    let d = strata_content::testsuite::write_blob(
        &h.local,
        &Scope::ns("default"),
        "ok",
        b"0123456789",
        Labels::new(),
    )
    .unwrap();

    rt.block_on(async {
        let ch = strata_proto::transport::connect_unix(&sock).await.unwrap();
        let mut c = ContentClient::new(ch);
        let code = |r: Option<tonic::Status>| r.map(|s| s.code());

        // Write stream abuse.
        let no_ref = pb::WriteContentRequest::default();
        assert_eq!(
            code(write_session(&mut c, vec![no_ref]).await),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(write_session(&mut c, vec![stat("a"), write(5, b"x")]).await),
            Some(Code::OutOfRange)
        );
        assert_eq!(
            code(write_session(&mut c, vec![stat("b"), write(-1, b"x")]).await),
            Some(Code::OutOfRange)
        );
        let neg_total = pb::WriteContentRequest {
            total: -5,
            ..stat("c")
        };
        assert_eq!(
            code(write_session(&mut c, vec![neg_total]).await),
            Some(Code::InvalidArgument)
        );
        let bad_expected = pb::WriteContentRequest {
            expected: "sha256:../../etc/passwd".into(),
            ..stat("d")
        };
        assert_eq!(
            code(write_session(&mut c, vec![bad_expected]).await),
            Some(Code::InvalidArgument)
        );
        let bad_action = pb::WriteContentRequest {
            action: 99,
            ..stat("e")
        };
        assert_eq!(
            code(write_session(&mut c, vec![bad_action]).await),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(write_session(&mut c, vec![stat("../../x")]).await),
            Some(Code::InvalidArgument)
        );
        let huge_ref = "r".repeat(64 << 10);
        assert_eq!(
            code(write_session(&mut c, vec![stat(&huge_ref)]).await),
            Some(Code::InvalidArgument)
        );
        // A correct write then a commit with a wrong size keeps the ingest usable.
        let commit_bad = pb::WriteContentRequest {
            action: pb::WriteAction::Commit as i32,
            offset: 3,
            total: 99,
            ..Default::default()
        };
        assert_eq!(
            code(write_session(&mut c, vec![stat("f"), write(0, b"abc"), commit_bad]).await),
            Some(Code::FailedPrecondition)
        );
        let st = c
            .status(with_ns(pb::StatusRequest { r#ref: "f".into() }, "default"))
            .await
            .unwrap();
        assert_eq!(st.into_inner().status.unwrap().offset, 3);

        // Reads.
        let read = |offset: i64, size: i64, digest: &str| {
            with_ns(
                pb::ReadContentRequest {
                    digest: digest.into(),
                    offset,
                    size,
                },
                "default",
            )
        };
        let ds = d.to_string();
        let err = |r: Result<
            tonic::Response<tonic::Streaming<pb::ReadContentResponse>>,
            tonic::Status,
        >| r.err().map(|s| s.code());
        assert_eq!(err(c.read(read(11, 0, &ds)).await), Some(Code::OutOfRange));
        assert_eq!(
            err(c.read(read(-1, 0, &ds)).await),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            err(c.read(read(0, -1, &ds)).await),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            err(c.read(read(0, 0, "sha256:zz")).await),
            Some(Code::InvalidArgument)
        );
        let mut s = c.read(read(4, 3, &ds)).await.unwrap().into_inner();
        let m = s.message().await.unwrap().unwrap();
        assert_eq!((m.offset, &m.data[..]), (4, &b"456"[..]));

        // Info / Delete / Update with bad digests, and a bad namespace header.
        let info = |digest: &str| {
            with_ns(
                pb::InfoRequest {
                    digest: digest.into(),
                },
                "default",
            )
        };
        for bad in ["", "sha256:", "md5:00", "SHA256:abc", "sha256:../.."] {
            assert_eq!(
                c.info(info(bad)).await.unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
        let mut r = Request::new(pb::InfoRequest { digest: ds.clone() });
        r.metadata_mut()
            .insert("containerd-namespace", "../etc".parse().unwrap());
        assert_eq!(c.info(r).await.unwrap_err().code(), Code::InvalidArgument);
        let upd = pb::UpdateRequest {
            info: Some(pb::Info {
                digest: ds.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["size".into()],
            }),
        };
        assert_eq!(
            c.update(with_ns(upd, "default")).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            c.update(with_ns(pb::UpdateRequest::default(), "default"))
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        let lst = pb::ListContentRequest {
            filters: vec!["labels.\"x".into()],
        };
        assert_eq!(
            c.list(with_ns(lst, "default")).await.unwrap_err().code(),
            Code::InvalidArgument
        );

        // Still serving, and nothing was committed by any of the above.
        let info = c.info(info(&ds)).await.unwrap().into_inner().info.unwrap();
        assert_eq!(info.size, 10);
        let mut s = c
            .list(with_ns(pb::ListContentRequest::default(), "default"))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(m) = s.message().await.unwrap() {
            n += m.info.len();
        }
        assert_eq!(n, 1);
    });
}
