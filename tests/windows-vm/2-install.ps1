# Step 2: sign the package with the test certificate, install it as a primitive driver with
# `pnputil /add-driver hivetrack.inf /install` (into the driver store; the service runs from
# there), start it, and enable Driver Verifier (standard rules + low-resources simulation) for
# hivetrack.sys. Verifier settings take effect after a reboot: the script reboots, then run
# .\3-logoff.ps1. With -StartAtBoot the service is set to system start (tracking from boot).
param([switch]$StartAtBoot)
. "$PSScriptRoot\common.ps1"
Assert-Admin
foreach ($f in 'hivetrack.sys', 'hivetrack.inf', 'hivetrack.exe') {
    if (-not (Test-Path (Join-Path $Package $f))) { throw "Missing $f in $Package (copy target/package/ there)." }
}
$cert = Get-ChildItem Cert:\LocalMachine\My | Where-Object Subject -eq 'CN=hivetrack test signing' | Select-Object -First 1
if (-not $cert) { throw 'No test certificate: run .\1-prepare.ps1 first.' }

foreach ($f in 'hivetrack.sys', 'hivetrack.exe') {
    $sig = Set-AuthenticodeSignature -FilePath (Join-Path $Package $f) -Certificate $cert -HashAlgorithm SHA256
    if ($sig.Status -notin 'Valid', 'UnknownError') { throw "Signing $f failed: $($sig.StatusMessage)" }
}
# A catalog for CatalogFile=hivetrack.cat (Inf2Cat from the WDK when present).
$inf2cat = Get-Command Inf2Cat.exe -ErrorAction SilentlyContinue
if ($inf2cat) {
    & $inf2cat.Source /driver:$Package /os:10_X64 | Out-Null
    Set-AuthenticodeSignature -FilePath (Join-Path $Package 'hivetrack.cat') -Certificate $cert -HashAlgorithm SHA256 | Out-Null
}

$out = & pnputil.exe /add-driver $Inf /install
$out | Set-Content (Join-Path $Results 'pnputil-add-driver.txt')
if ($LASTEXITCODE -ne 0) { throw "pnputil /add-driver failed ($LASTEXITCODE): $out" }
$svc = Get-Service hivetrack -ErrorAction SilentlyContinue
if (-not $svc) { throw 'The INF did not create the hivetrack service.' }
$image = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack').ImagePath
if ($image -notmatch 'DriverStore\\FileRepository\\hivetrack\.inf_') {
    throw "ImagePath is $image, expected the driver store (DIRID 13)"
}
if ($StartAtBoot) { sc.exe config hivetrack start= system | Out-Null }
sc.exe start hivetrack | Out-Null
$v = Invoke-Hivetrack @('version')
$v.Text | Set-Content (Join-Path $Results 'version.txt')
if ($v.Code -ne 0) { throw "hivetrack version failed ($($v.Code)): $($v.Text)" }
Write-Host $v.Text

# Standard flags plus low-resources simulation (0x4): 0x209BF. Takes effect at the next boot.
verifier /flags 0x209BF /driver hivetrack.sys | Out-Null
verifier /querysettings | Set-Content (Join-Path $Results 'verifier-settings.txt')
Set-KitState 'installed-verifier-pending-reboot'
Write-Host 'Installed; Driver Verifier armed for hivetrack.sys. Reboot, wait 8 minutes (the'
Write-Host 'low-resources grace period), then run .\3-logoff.ps1.'
Restart-Computer -Confirm
