//! Runs inside the lab machine (L1): `lab-api-get SOCKET PATH` sends `GET PATH` over
//! bulwark-vmm's REST API on the Unix socket SOCKET and prints the response body on
//! stdout (busybox has no Unix-socket HTTP client). Exit 0 on HTTP 200, 1 on any other
//! status or an I/O error (printed on stderr), 2 on bad arguments.

use bulwark_integration_tests::vmm_api::get;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sock, path] = args.as_slice() else {
        eprintln!("usage: lab-api-get SOCKET PATH");
        return std::process::ExitCode::from(2);
    };
    match get(sock, path) {
        Ok((status, body)) => {
            println!("{body}");
            if status.split_whitespace().nth(1) == Some("200") {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("lab-api-get: {status}");
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lab-api-get: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
