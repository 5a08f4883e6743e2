# Step 4: stop and uninstall through the INF, reset Driver Verifier, remove the test
# certificate, and check nothing is left. Test signing stays on (bcdedit /set testsigning off
# and a reboot turn it off).
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
sc.exe stop hivetrack 2>&1 | Out-Null
& rundll32.exe setupapi.dll,InstallHinfSection DefaultUninstall 132 $Inf
Start-Sleep -Seconds 2
verifier /reset | Out-Null
Write-Result 'service removed' (-not (Get-Service hivetrack -ErrorAction SilentlyContinue)) ''
Write-Result 'driver file removed' (-not (Test-Path "$env:SystemRoot\System32\drivers\hivetrack.sys")) ''
foreach ($store in 'My', 'Root', 'TrustedPublisher') {
    Get-ChildItem "Cert:\LocalMachine\$store" | Where-Object Subject -eq 'CN=hivetrack test signing' | Remove-Item
}
Remove-Item $State -ErrorAction SilentlyContinue
exit $script:Failures
