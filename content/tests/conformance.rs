//! containerd's content conformance suite, run against the local store in-process and
//! through the gRPC adapter over a real unix socket, in the global space and in a
//! namespace.

mod common;

use strata_content::testsuite as ts;
use strata_content::{Namespace, SHAREABLE_LABEL, Scope, SharingPolicy};

macro_rules! cases {
    ($($name:ident => |$h:ident| $body:expr;)*) => {
        mod in_process {
            use super::*;
            $(#[test] fn $name() { let $h = &common::local(SharingPolicy::Shared); $body; })*
        }
        mod over_grpc {
            use super::*;
            $(#[test] fn $name() { let $h = &common::grpc(SharingPolicy::Shared); $body; })*
        }
    };
}

fn ns() -> Scope {
    Scope::ns("testsuite")
}

cases! {
    writer => |h| ts::writer(h.store(), &ns());
    writer_global => |h| ts::writer(h.store(), &Scope::global());
    update_status => |h| ts::update_status(h.store(), &ns());
    commit_exists => |h| ts::commit_exists(h.store(), &ns());
    commit_exists_global => |h| ts::commit_exists(h.store(), &Scope::global());
    resume => |h| ts::resume(h.store(), &ns());
    resume_truncate => |h| ts::resume_grid(h.store(), &ns(), ts::ResumeMode::Truncate);
    resume_discard => |h| ts::resume_grid(h.store(), &ns(), ts::ResumeMode::Discard);
    resume_copy => |h| ts::resume_grid(h.store(), &ns(), ts::ResumeMode::Copy);
    resume_copy_seeker => |h| ts::resume_grid(h.store(), &ns(), ts::ResumeMode::CopySeeker);
    resume_copy_reader_at => |h| ts::resume_grid(h.store(), &Scope::global(), ts::ResumeMode::CopyReaderAt);
    small_blob => |h| ts::small_blob(h.store(), &ns());
    labels => |h| ts::labels_case(h.store(), &ns());
    labels_global => |h| ts::labels_case(h.store(), &Scope::global());
    commit_error_state => |h| ts::commit_error_state(h.store(), &ns());
    commit_error_state_global => |h| ts::commit_error_state(h.store(), &Scope::global());
    truncate_recovers => |h| ts::truncate_recovers(h.store(), &ns());
    walk_and_delete => |h| ts::walk_and_delete(h.store(), &ns());
    walk_and_delete_global => |h| ts::walk_and_delete(h.store(), &Scope::global());
    cross_namespace_append => |h| ts::cross_namespace_append(h.store(), &Scope::ns("ns1"), &Scope::ns("ns2"));
    cross_namespace_share => |h| ts::cross_namespace_share(h.store(), &Scope::ns("ns1"), &Scope::ns("ns2"));
    namespaces_are_separate => |h| ts::namespaces_are_separate(h.store(), &Scope::ns("ns1"), &Scope::ns("ns2"));
    hostile_input => |h| ts::hostile_input(h.store(), &ns());
    hostile_input_global => |h| ts::hostile_input(h.store(), &Scope::global());
    leases => |h| ts::leases(h.leases(), &ns());
}

macro_rules! isolated_cases {
    ($($name:ident => |$h:ident| $body:expr;)*) => {
        mod isolated_in_process {
            use super::*;
            $(#[test] fn $name() { let $h = &common::local(SharingPolicy::Isolated); $body; })*
        }
        mod isolated_over_grpc {
            use super::*;
            $(#[test] fn $name() { let $h = &common::grpc(SharingPolicy::Isolated); $body; })*
        }
    };
}

isolated_cases! {
    cross_namespace_isolate => |h| ts::cross_namespace_isolate(h.store(), &Scope::ns("ns1"), &Scope::ns("ns2"));
    shared_namespace_isolate => |h| {
        let mut l = strata_content::Labels::new();
        l.insert(SHAREABLE_LABEL.into(), "true".into());
        h.local.set_namespace_labels(&Namespace::new("ns1").unwrap(), &l).unwrap();
        ts::shared_namespace_isolate(h.store(), &Scope::ns("ns1"), &Scope::ns("ns2"));
    };
}
